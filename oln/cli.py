"""`oln <stage> ...`: one thin subcommand per pipeline stage.

Each subcommand reads its stage's config section either from a config file
(`--config config/config.yaml --set section.key=value`) or as JSON
(`--params '{...}'`, which is how the Snakemake rules pass it), validates it
against the schema, and calls one library function. Heavy imports happen
inside the commands so `oln --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from oln.config import ConfigError, load_config, parse_override, validate_config

log = logging.getLogger("oln")

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
    overrides = dict(parse_override(text) for text in args.set or [])
    return load_config(args.config, overrides)


def section_of(args: argparse.Namespace) -> dict:
    """The validated config section of this subcommand."""
    return config_of(args)[args.section]


def build_parser() -> argparse.ArgumentParser:
    """The `oln` argument parser with every registered subcommand."""
    import oln.commands  # noqa: F401  (registers the subcommands)

    parser = argparse.ArgumentParser(prog="oln", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        section = cmd.section
        if section is not None:
            src = p.add_mutually_exclusive_group()
            src.add_argument("--config", default="config/config.yaml", help="experiment YAML (default: %(default)s)")
            src.add_argument("--params", help=f"the '{section}' config section as JSON (used by the rules)")
            p.add_argument("--set", action="append", metavar="KEY=VALUE",
                           help="override a config key, e.g. --set synthetic.num_train=50")
            p.set_defaults(section=section)
        cmd.add_arguments(p)
        p.set_defaults(func=cmd.func)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `oln` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        result = args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"oln {args.command}: error: {err}", file=sys.stderr)
        return 2
    if isinstance(result, dict):
        print(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
