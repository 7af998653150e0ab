"""Every sub-command's handler reads only options its own parser defines, and reads all of them.

A merge once moved ``serve``'s ``--ray`` onto ``verify``: ``compnn serve`` then died with
``AttributeError: 'Namespace' object has no attribute 'ray'`` on every store while every
in-process test passed. These tests read each ``_cmd_*`` handler's ``a.NAME`` attribute reads
(its source, parsed) and compare them with the ``dest`` of every action its parser has.
"""
from __future__ import annotations

import argparse
import ast
import inspect
import textwrap

import pytest

from compnn_index import cli
from compnn_index.cli import COMMANDS, build_parser

#: Namespace entries argparse itself adds (the sub-command selectors) and help actions.
_PLUMBING = {"command", "help", "version"}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _dests(parser: argparse.ArgumentParser) -> set[str]:
    """Every namespace attribute a parse through ``parser`` can set, nested sub-commands included."""
    out: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            out.add(action.dest)
            for child in action.choices.values():
                out |= _dests(child)
        elif action.dest is not argparse.SUPPRESS:
            out.add(action.dest)
    return out - _PLUMBING


def _reads(handler) -> set[str]:
    """``a.NAME`` reads of a handler whose first parameter is the namespace."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(handler)))
    fn = tree.body[0]
    arg = fn.args.args[0].arg
    return {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == arg}


PARSERS = _subparsers(build_parser())


def test_every_parser_sub_command_has_a_handler_and_back():
    assert set(PARSERS) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_handler_reads_only_options_its_parser_defines(command):
    missing = _reads(COMMANDS[command]) - _dests(PARSERS[command])
    assert not missing, f"compnn {command}: the handler reads {sorted(missing)}, which its parser never sets"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_of_a_command_reaches_its_handler(command):
    ignored = _dests(PARSERS[command]) - _reads(COMMANDS[command])
    assert not ignored, f"compnn {command}: options {sorted(ignored)} are accepted but never used"


def test_serve_parses_ray_and_verify_does_not():
    parser = build_parser()
    assert parser.parse_args(["serve", "S", "--ray", "auto"]).ray == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["verify", "S", "--ray", "auto"])


def test_reads_sees_the_attribute_a_handler_uses():
    # the reader itself: a handler that reads an option no parser sets is caught
    def _cmd_bad(a):
        return a.index, a.not_an_option

    assert _reads(_cmd_bad) == {"index", "not_an_option"}
    assert "not_an_option" not in _dests(PARSERS["serve"]) and cli  # the module is the one tested
