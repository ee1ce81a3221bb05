"""The record-config subcommand: resolved config + provenance of an experiment."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from oln.commands.registry import command
from oln.config import ConfigError, validate_config

log = logging.getLogger(__name__)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resolved", required=True, help="the whole experiment config as JSON (the rule passes it)")
    p.add_argument("--out-dir", required=True, type=Path, help="results/<experiment>/")
    p.add_argument("--repo", type=Path, default=Path("."), help="git checkout the code runs from (default: .)")


@command("record-config", "write results/<experiment>/config.yaml and provenance.json", None, _args)
def record_config(args: argparse.Namespace) -> dict:
    from oln.provenance import record_experiment

    try:
        config = json.loads(args.resolved)
    except json.JSONDecodeError as err:
        raise ConfigError(f"--resolved is not valid JSON ({err})") from err
    log.info("recording the config and provenance of %s", args.out_dir)
    return record_experiment(validate_config(config), args.out_dir, args.repo)
