"""Every option and subcommand of ``audience-lake`` explains itself; ``--version`` answers."""

from __future__ import annotations

import argparse
from importlib.metadata import version

import pytest

from flows.cli import build_parser


def _walk(parser: argparse.ArgumentParser, path: str) -> list[str]:
    """Key paths of the actions without a help text, through every subparser."""
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helped = {choice.dest for choice in action._choices_actions if choice.help}
            for name, sub in action.choices.items():
                if name not in helped:
                    missing.append(f"{path} {name}")
                missing.extend(_walk(sub, f"{path} {name}"))
        elif not action.help:
            missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    return missing


def test_every_option_and_subcommand_has_help() -> None:
    assert _walk(build_parser(), "audience-lake") == []


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out.strip() == f"audience-lake {version('audience-lake')}"
