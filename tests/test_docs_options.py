"""Every ``compnn`` option the documentation names exists on the command it is named with.

The README's commands run in ``test_readme.py``; the other pages (``docs/*.md``, the results
pages, ``indexes/README.md``) are read, not run: each ``compnn CMD … --flag`` in a code block or
an inline code span is checked against CMD's parser, so an option moved to another command or
renamed (``serve --ray`` once landed on ``verify``) fails here, not in a user's shell.
"""
from __future__ import annotations

import re

import pytest

from compnn_index.cli import COMMANDS, build_parser
from conftest import REPO_ROOT
from readme_runner import _options, _sub_parser

PAGES = sorted([REPO_ROOT / "README.md", *(REPO_ROOT / "docs").glob("*.md"), *(REPO_ROOT / "docs" / "results").glob("*.md"),
                *(REPO_ROOT / "indexes").glob("*.md")])
_COMMAND = re.compile(r"(?:^|[\s`(])compnn\s+([a-z][a-z0-9-]*)([^`\n]*)")
_END = re.compile(r"\s(?:\||;|&&|>|2>|#)\s")
_FLAG = re.compile(r"(--[a-z][a-z0-9-]*)")


def documented_options(text: str):
    """(line, command words, option) of every ``compnn COMMAND ... --option`` in ``text``; the
    command words are the ones before the first option (``invert train``: a nested command)."""
    text = re.sub(r"\\\n\s*", " ", text)  # shell continuations
    for n, line in enumerate(text.splitlines(), 1):
        for m in _COMMAND.finditer(line):
            if m.group(1) not in COMMANDS:
                continue  # prose ("compnn explains ...")
            words = [m.group(1), *_END.split(m.group(2))[0].split()]
            command = " ".join(w for w in words[:next((i for i, w in enumerate(words) if w.startswith("-")), len(words))])
            for word in words:
                flag = _FLAG.match(word)
                if flag and flag.group(1) != "--x":  # "--x": the README runner's placeholder
                    yield n, command, flag.group(1)


def test_the_scanner_finds_options_in_blocks_continuations_and_inline_spans():
    text = "run `compnn query S 3 --top-k 8 | head` then\n```\ncompnn build --model m \\\n  --codec fp16 # --not\n```"
    assert list(documented_options(text)) == [(1, "query S 3", "--top-k"), (3, "build", "--model"),
                                              (3, "build", "--codec")]


def missing_options(text: str, where: str) -> list[str]:
    parser = build_parser()
    return [f"{where}:{n}: compnn {cmd} has no {flag}" for n, cmd, flag in documented_options(text)
            if flag not in _options(_sub_parser(parser, cmd.split()))]


def test_an_option_named_on_the_wrong_command_is_reported():
    text = "`compnn serve S --ray auto` and `compnn verify S --ray auto`, `compnn invert train --store S`"
    assert missing_options(text, "page") == ["page:1: compnn verify S has no --ray"]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO_ROOT)) for p in PAGES])
def test_every_documented_compnn_option_exists_on_its_command(page):
    missing = missing_options(page.read_text(), page.name)
    assert not missing, "\n".join(missing)
