"""Reading the README's code blocks as the commands a user would type, and running them small.

``readme_steps(text)`` turns the README's ```` ```bash ```` and ```` ```python ```` blocks into
:class:`Step`\\ s in reading order: ``compnn ...`` commands (continuation lines joined, comments
dropped, shell variables such as ``F=facades`` expanded), ``curl`` calls, and Python scripts.
A command whose line (or the comment line just above it) carries ``[needs: REASON]`` is kept
with that reason, and the test skips it saying so.

``shrink(argv, parser)`` makes a command small without knowing a command's option list: it
lowers the few *scale* options a command has (``--size`` where it reads a dataset, ``--ngf``,
``--epochs``, ``--limit``) and adds ``--limit``, ``--epochs`` and ``--threads 1`` where the
command accepts them (read from the ``compnn`` parser itself) and the README gave none.
"""
from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass, field

NEEDS = re.compile(r"\[needs:\s*([^\]]+)\]")
_FENCE = re.compile(r"^```(\w*)\s*$")
_ASSIGN = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(\S+)\s*(#.*)?$")

#: Images a training or build command reads (train split), and an evaluation reads (test split).
TRAIN_LIMIT, TEST_LIMIT = 16, 2
#: The scale options lowered where a README command gives them (value: the small one).
SMALL = {"--ngf": 8, "--epochs": 1}
#: A ``--size`` of a command that reads a dataset (``--data``) becomes this.
SMALL_SIZE = 64


@dataclass
class Step:
    """One thing the README shows: ``kind`` is ``compnn``, ``curl`` or ``python``."""

    kind: str
    text: str                       # the command line (joined) or the script
    argv: list[str] = field(default_factory=list)
    needs: str | None = None        # why the test cannot run it, from a [needs: ...] marker
    line: int = 0                   # where it starts in the README (1-based)

    def __str__(self) -> str:
        return f"README line {self.line}: {self.text if self.kind != 'python' else 'python block'}"


def _blocks(text: str):
    """(language, first line number, lines) of every fenced block."""
    lang, start, body = None, 0, []
    for n, line in enumerate(text.splitlines(), 1):
        m = _FENCE.match(line.strip())
        if m and lang is None:
            lang, start, body = m.group(1) or "text", n + 1, []
        elif line.strip() == "```" and lang is not None:
            yield lang, start, body
            lang = None
        elif lang is not None:
            body.append(line)


def _logical_lines(start: int, lines: list[str]):
    """(line number, joined text, comment just above) with backslash continuations joined."""
    buf, first, above, prev_comment = "", 0, None, None
    for n, raw in enumerate(lines, start):
        stripped = raw.strip()
        if not buf and stripped.startswith("#"):
            prev_comment = stripped
            continue
        if not buf:
            first, above = n, prev_comment
        prev_comment = None
        if raw.rstrip().endswith("\\"):
            buf += raw.rstrip()[:-1] + " "
            continue
        yield first, (buf + raw).strip(), above
        buf = ""


def readme_steps(text: str, variables: dict[str, str]) -> list[Step]:
    """The README's steps; ``variables`` maps a shell assignment's value (``F=facades``) to the
    path the test uses, and collects the assignments it sees."""
    steps: list[Step] = []
    env: dict[str, str] = {}
    for lang, start, lines in _blocks(text):
        if lang == "python":
            steps.append(Step("python", "\n".join(lines), line=start))
            continue
        if lang not in ("bash", "sh", "shell"):
            continue
        for n, line, above in _logical_lines(start, lines):
            m = _ASSIGN.match(line)
            if m:
                env[m.group(1)] = variables.get(m.group(2), m.group(2))
                continue
            words = shlex.split(line, comments=True)
            if not words or words[0] not in ("compnn", "curl"):
                continue
            argv = [re.sub(r"\$(\w+)|\$\{(\w+)\}", lambda v: env.get(v.group(1) or v.group(2), v.group(0)), w)
                    for w in words]
            marker = NEEDS.search(line) or (NEEDS.search(above) if above else None)
            steps.append(Step(words[0], line, argv=argv, needs=marker.group(1).strip() if marker else None,
                              line=n))
    return steps


def expand_ellipsis(argv: list[str], previous: dict[str, list[str]]) -> list[str]:
    """``compnn build ... --codec fp16 --out X``: ``...`` is the last full command of that name
    without its ``--out`` and without the options given again after the ``...``."""
    if "..." not in argv:
        return argv
    i = argv.index("...")
    before = previous.get(argv[1])
    if before is None:
        raise ValueError(f"'...' in {' '.join(argv)} follows no full 'compnn {argv[1]}' command")
    given = {w for w in argv[i + 1:] if w.startswith("--")}
    rest, kept, j = before[2:], [], 0
    while j < len(rest):
        if rest[j].startswith("--") and (rest[j] == "--out" or rest[j] in given):
            j += 2 if j + 1 < len(rest) and not rest[j + 1].startswith("--") else 1
            continue
        kept.append(rest[j])
        j += 1
    return argv[:i] + kept + argv[i + 1:]


def _sub_parser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The (nested) sub-command parser ``argv`` (without the program name) selects."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for i, w in enumerate(argv):
                if w in action.choices:
                    return _sub_parser(action.choices[w], argv[i + 1:])
    return parser


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings}


def _set(argv: list[str], flag: str, value) -> list[str]:
    i = argv.index(flag)
    return argv[:i + 1] + [str(value)] + argv[i + 2:]


def shrink(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """``argv`` (``compnn CMD ...``) on small inputs; see the module docstring."""
    sub = _sub_parser(parser, argv[1:])
    opts = _options(sub)
    reads_data = "--data" in argv
    split = next((a.default for a in sub._actions if a.dest == "split"), "train")
    limit = TEST_LIMIT if split == "test" else TRAIN_LIMIT
    out = list(argv)
    for flag, small in SMALL.items():
        if flag in out:
            out = _set(out, flag, min(int(out[out.index(flag) + 1]), small))
        elif flag in opts and flag == "--epochs":
            out += [flag, str(small)]
    if reads_data and "--size" in out:
        out = _set(out, "--size", SMALL_SIZE)
    if "--limit" in out:
        out = _set(out, "--limit", min(int(out[out.index("--limit") + 1]), limit))
    elif "--limit" in opts and (reads_data or "--store" in out):
        out += ["--limit", str(limit)]
    if "--threads" in opts and "--threads" not in out:
        out += ["--threads", "1"]
    return out
