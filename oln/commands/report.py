"""Report subcommands: report (summary + figures of an experiment), plot-curve (one log)."""

from __future__ import annotations

import argparse
from pathlib import Path

from oln.cli import command, section_of
from oln.commands.common import add_split_arguments, categories_of, split_ids
from oln.config import options_from_dict


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exp-dir", required=True, type=Path, help="results/<experiment>")
    p.add_argument("--val-json", required=True, type=Path, help="COCO json of the evaluation images")
    p.add_argument("--image-root", required=True, type=Path, help="image root of --val-json")
    add_split_arguments(p)


@command("report", "summary.csv/.md and plots/ of an experiment's results", "report", _report_args)
def report(args: argparse.Namespace) -> dict:
    from oln.plots import plot_ar_curves, plot_training_curves
    from oln.report import ReportOptions, plot_comparison, summary_table, write_summary

    options = options_from_dict(ReportOptions, section_of(args), "report")
    exp = args.exp_dir
    eval_paths = {p.stem: p for p in sorted((exp / "eval").glob("*.json"))}
    if not eval_paths:
        raise FileNotFoundError(f"{exp / 'eval'}: no evaluation json")
    table = summary_table(eval_paths)
    write_summary(table, exp / "summary.csv", exp / "summary.md", f"Experiment {exp.name}")
    from oln.io import read_json

    plot_ar_curves({name: read_json(path) for name, path in eval_paths.items()}, exp / "plots" / "ar_curves.png",
                   title=exp.name)
    logs = {"pa": exp / "pa" / "log.jsonl"}
    logs.update({p.parent.name: p for p in sorted((exp / "detector").glob("*/log.jsonl"))})
    plot_training_curves({k: v for k, v in logs.items() if v.exists()}, exp / "plots" / "training_curves.png")
    predictions = {run: exp / "detector" / run / "predictions.json" for run in options.comparison_runs}
    predictions = {run: path for run, path in predictions.items() if path.exists()}
    if not predictions:
        predictions = {p.parent.name: p for p in sorted((exp / "detector").glob("*/predictions.json"))[:2]}
    unseen = split_ids(args.unseen, categories_of(args.val_json))
    plot_comparison(args.val_json, args.image_root, predictions, unseen, options,
                    exp / "plots" / "baseline_vs_ggn.png")
    return {"summary": str(exp / "summary.csv"), "runs": list(eval_paths)}


def _curve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("log", type=Path, help="a training log.jsonl")
    p.add_argument("--keys", nargs="+", help="log fields to draw (default: every loss term)")
    p.add_argument("--out", required=True, type=Path, help="PNG to write")
    p.add_argument("--title", default="", help="plot title")


@command("plot-curve", "plot loss terms (and lr) of a training log.jsonl", None, _curve_args)
def plot_curve(args: argparse.Namespace) -> dict:
    from oln.plots import plot_curve as run

    run(args.log, args.out, args.keys, args.title)
    return {"plot": str(args.out)}
