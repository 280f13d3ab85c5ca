"""The commands in README.md and docs/ name subcommands and options that the CLI has, so the docs cannot
drift from it: every `radmtl …` line of a ```bash block is parsed against radmtl's own argparse tree."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from radmtl.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```(?:bash|sh|console)\n(.*?)```", re.DOTALL)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def radmtl_commands(text: str) -> list[list[str]]:
    """The argument lists after ``radmtl`` on every command line of the shell blocks of ``text``."""
    commands = []
    for block in BLOCK.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError:
                continue
            for i, token in enumerate(tokens):
                if token == "radmtl" or token.endswith("/radmtl"):
                    if i > 0 and tokens[i - 1] == "-m" or i == 0 or tokens[i - 1] in ("time", "exec") \
                            or "/" in token:
                        commands.append(tokens[i + 1:])
                        break
    return commands


def command_problems(args: list[str]) -> list[str]:
    """What in ``radmtl ARGS`` the CLI does not have: an unknown subcommand or option."""
    parser = build_parser()
    subcommands = _subparsers(parser)
    global_options = _options(parser)
    rest = list(args)
    while rest and rest[0].startswith("-"):
        if rest[0] not in global_options:
            return [f"unknown global option {rest[0]}"]
        rest.pop(0)
    if not rest:
        return []
    name = rest.pop(0)
    if name not in subcommands:
        return [f"unknown subcommand {name!r}"]
    known = _options(subcommands[name]) | global_options
    return [f"radmtl {name}: unknown option {token.split('=')[0]}" for token in rest
            if token.startswith("--") and token.split("=")[0] not in known]


def test_the_checker_fails_on_an_option_the_cli_does_not_have():
    text = "```bash\nradmtl infer --model m.pt --input x --output y --no-such-option 3   # a comment\n```\n"
    (args,) = radmtl_commands(text)
    assert command_problems(args) == ["radmtl infer: unknown option --no-such-option"]
    assert command_problems(["trian", "--data", "D"]) == ["unknown subcommand 'trian'"]
    assert command_problems(["-q", "check", "DATA"]) == []
    wrapped = "```bash\ntorchrun --nproc_per_node 2 -m radmtl train \\\n  --data D --out O --resumee\n```\n"
    assert command_problems(radmtl_commands(wrapped)[0]) == ["radmtl train: unknown option --resumee"]


@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_every_documented_radmtl_command_exists(doc):
    problems = [f"{doc.name}: radmtl {' '.join(args)}: {p}" for args in radmtl_commands(doc.read_text())
                for p in command_problems(args)]
    assert problems == []


def test_readme_shows_each_command_of_the_tool():
    commands = {args[0] for args in radmtl_commands((ROOT / "README.md").read_text()) if args}
    assert set(_subparsers(build_parser())) <= commands
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
