"""The subcommand registry: `@command` registers a handler; `config_of`/`section_of` read its config.

Commands import this module (never `oln.cli`), and `oln.cli` imports the commands, so the
command layer has no import cycle.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from oln.config import ConfigError, load_config, parse_override, validate_config


@dataclass
class Command:
    """A subcommand: its handler, help, config section (None: no config) and path arguments."""

    func: Callable[[argparse.Namespace], Any]
    help: str
    section: str | None
    add_arguments: Callable[[argparse.ArgumentParser], None]


COMMANDS: dict[str, Command] = {}


def command(name: str, help_text: str, section: str | None, arguments: Callable[[argparse.ArgumentParser], None]):
    """Register a subcommand handler (see oln/commands/)."""

    def register(func: Callable[[argparse.Namespace], Any]):
        COMMANDS[name] = Command(func, help_text, section, arguments)
        return func

    return register


def config_of(args: argparse.Namespace) -> dict:
    """The validated config: from --params (one section as JSON) or --config/--set."""
    if getattr(args, "params", None):
        try:
            section = json.loads(args.params)
        except json.JSONDecodeError as err:
            raise ConfigError(f"--params is not valid JSON ({err})") from err
        return validate_config({args.section: section})
    path = Path(args.config)
    if path.is_dir():
        raise ConfigError(f"--config {path} is a directory; give a YAML file (e.g. {path / 'config.yaml'})")
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    overrides = dict(parse_override(text) for text in args.set or [])
    check_overrides(path, overrides)
    return load_config(path, overrides)


def check_overrides(path: Path, overrides: dict[str, Any]) -> None:
    """Refuse `--set a.b=v` when `a` holds a value (not a section) in the config file.

    Raises:
        ConfigError: naming the override and the key that is not a section.
    """
    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f) or {}
    except yaml.YAMLError:
        return  # load_config reports invalid YAML
    for dotted, value in overrides.items():
        *parents, last = dotted.split(".")
        node = config
        for depth, key in enumerate(parents):
            if not isinstance(node, dict):
                break
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                parent = ".".join(parents[: depth + 1])
                raise ConfigError(f"--set {dotted}={value}: {parent} is a value ({child!r}), not a section, "
                                  f"so it has no key '{'.'.join(dotted.split('.')[depth + 1:])}'")
            node = child
        if isinstance(node, dict):
            node[last] = value


def section_of(args: argparse.Namespace) -> dict:
    """The validated config section of this subcommand."""
    return config_of(args)[args.section]
