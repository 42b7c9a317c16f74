"""The docs keep to the code: every subcommand and flag documented under its heading, every config key
with its default, every ``medmae`` command line in a code block parses, every relative link resolves, and
the README stays short."""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex

import pytest
import yaml

from medmae.cli import build_parser
from medmae.config import Config, known_keys, parse_override
from tests.helpers import ROOT

DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def read(path) -> str:
    return path.read_text(encoding="utf-8")


def subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """``"data check"`` -> its parser, for every subcommand at any depth."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = subcommands(sub, f"{prefix}{name} ")
                found |= nested or {f"{prefix}{name}": sub}
    return found


def flags(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings if option.startswith("--")}


def command_sections() -> dict[str, str]:
    """``## medmae NAME`` heading of docs/reference/commands.md -> the text under it."""
    sections = re.split(r"^## ", read(ROOT / "docs" / "reference" / "commands.md"), flags=re.MULTILINE)[1:]
    return {head.removeprefix("medmae ").strip(): body for head, _, body in (s.partition("\n") for s in sections)}


def test_every_subcommand_has_its_section_and_every_flag_is_documented_there():
    sections = command_sections()
    commands = subcommands(build_parser())
    assert set(sections) == set(commands)
    for name, parser in commands.items():
        documented = {flag for code in re.findall(r"`([^`\n]+)`", sections[name]) for flag in FLAG.findall(code)}
        assert documented == flags(parser), name


def test_the_global_flags_are_documented_before_the_first_command():
    preamble = read(ROOT / "docs" / "reference" / "commands.md").split("\n## ")[0]
    assert all(f"`{flag}`" in preamble for flag in flags(build_parser()))


def config_rows() -> dict[str, str]:
    """`` `section.key` `` of a table row in docs/reference/config.md -> its default cell."""
    table = read(ROOT / "docs" / "reference" / "config.md")
    return dict(re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \| ([^|]*) \|", table, re.MULTILINE))


def test_every_config_key_is_documented_once_with_its_default():
    rows = config_rows()
    assert set(rows) == set(known_keys())
    defaults = {f"{s}.{k}": v for s, values in dataclasses.asdict(Config()).items() for k, v in values.items()}
    for key, cell in rows.items():
        assert yaml.safe_load(cell.strip().strip("`")) == defaults[key], key


def command_lines() -> list[tuple[str, str]]:
    """(file, command) for every line of a fenced code block that runs ``medmae``, continuations joined."""
    found = []
    for path in DOCS:
        for block in re.findall(r"^```[a-z]*\n(.*?)^```", read(path), re.MULTILINE | re.DOTALL):
            for line in block.replace("\\\n", " ").splitlines():
                words = line.split("#")[0].strip()
                if words.startswith(("medmae ", ".venv/bin/medmae ")):
                    found.append((str(path.relative_to(ROOT)), words))
    return found


@pytest.mark.parametrize("where, line", command_lines())
def test_every_documented_command_parses_and_sets_only_real_keys(where, line):
    words = shlex.split(re.sub(r"\[[^\]]*\]", "", line))[1:]  # a synopsis's optional parts left out
    try:
        args = build_parser().parse_args(words)
    except SystemExit as error:
        pytest.fail(f"{where}: `{line}` does not parse (exit {error.code})")
    for override in getattr(args, "set", []):
        key = parse_override(override.split(":", 1)[-1] if ":" in override.split("=")[0] else override)[0]
        assert key in known_keys(), f"{where}: `{line}` sets an unknown key {key}"


def test_there_are_documented_commands_to_check():
    assert len(command_lines()) > 20


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    for target in re.findall(r"\]\(([^)\s]+)\)", read(path)):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        assert (path.parent / target.split("#")[0]).exists(), f"{path.relative_to(ROOT)}: broken link {target}"


def test_the_readme_is_at_most_200_lines():
    assert len(read(ROOT / "README.md").splitlines()) <= 200
