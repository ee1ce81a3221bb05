"""The report stage: summary table, AR@k curves, training curves, baseline-vs-GGN panel.

Reads what the other stages wrote under `results/<experiment>/` and writes
`summary.csv`, `summary.md` and `plots/*.png`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from oln.io import read_json, write_text

SUMMARY_KS = (10, 30, 100, 300, 1000)


@dataclass
class ReportOptions:
    """Options of the report stage.

    Attributes:
        comparison_runs: the two runs shown side by side (missing ones are skipped).
        comparison_images: val images in the side-by-side panel.
        comparison_top_k: detections per image drawn in the panel (best first).
    """

    comparison_runs: tuple[str, ...] = ("baseline", "ggn")
    comparison_images: int = 6
    comparison_top_k: int = 20


def summary_row(name: str, evaluation: dict) -> dict:
    """One summary-table row (values in %) of an evaluation json."""
    row: dict = {"run": name, "protocol": evaluation_protocol(evaluation)}
    for iou_type, label in (("bbox", "box"), ("segm", "mask")):
        metrics = evaluation.get(iou_type)
        for k in SUMMARY_KS:
            row[f"{label} AR@{k}"] = _pct(metrics, f"AR@{k}")
        row[f"{label} AUC"] = _pct(metrics, "AUC")
        for size in ("s", "m", "l"):
            row[f"{label} AR_{size}@100"] = _pct(metrics, f"AR_{size}@100")
        reference = evaluation.get("seen_reference", {}).get(iou_type)
        row[f"{label} AR@100 seen"] = _pct(reference, "AR@100")
    per_image = [m.get("max_detections_per_image") for key, m in evaluation.items()
                 if key in ("bbox", "segm") and isinstance(m, dict)]
    row["max detections per image"] = max((n for n in per_image if n is not None), default=math.nan)
    return row


def capped_budget_notes(table: pd.DataFrame) -> list[str]:
    """A line per run whose detections per image stop below a summary budget k (AR@k = AR@cap there)."""
    if "max detections per image" not in table:
        return []
    notes = []
    for run, cap in zip(table["run"], table["max detections per image"]):
        above = [k for k in SUMMARY_KS if not pd.isna(cap) and k > cap]
        if above:
            notes.append(f"`{run}` has at most {int(cap)} detections per image: its AR@k for k = "
                         f"{', '.join(map(str, above))} is its AR@{int(cap)}.")
    return notes


PROTOCOL_TEXT = {
    "class_agnostic": "all categories evaluated, class-agnostic (COCOeval useCats=0)",
    "cross_category_seen_removed_oln": "OLN's published protocol: detections matching a seen object at IoU 0.5 "
                                       "are removed in one pass and do not use up the budget k",
    "cross_category_seen_removed": "seen detections removed, the rest re-matched (`evaluate.seen_removal: "
                                   "rematch`, not the published protocol)",
}


def evaluation_protocol(evaluation: dict) -> str:
    """The protocol an evaluation json was computed with (one name for all its iou types)."""
    names = {metrics["protocol"] for key, metrics in evaluation.items()
             if key in ("bbox", "segm") and isinstance(metrics, dict) and "protocol" in metrics}
    return "/".join(sorted(names)) or "unknown"


def _pct(metrics: dict | None, key: str) -> float:
    if not metrics or key not in metrics or metrics[key] is None:
        return math.nan
    return round(100.0 * float(metrics[key]), 2)


def summary_table(eval_paths: dict[str, str | os.PathLike]) -> pd.DataFrame:
    """Summary rows of every evaluation json (name -> path), in the given order."""
    return pd.DataFrame([summary_row(name, read_json(path)) for name, path in eval_paths.items()])


def markdown_table(table: pd.DataFrame, columns: Sequence[str]) -> str:
    """A GitHub markdown table of `columns` (NaN shown as '-')."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in table.iterrows():
        cells = [row[c] if isinstance(row[c], str) else ("-" if pd.isna(row[c]) else f"{row[c]:.1f}")
                 for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_summary(table: pd.DataFrame, csv_path: str | os.PathLike, md_path: str | os.PathLike,
                  title: str) -> None:
    """summary.csv (every column) and summary.md (mask and box tables)."""
    write_text(csv_path, table.to_csv(index=False))
    parts = [f"# {title}", "", "Average recall (%) on unseen categories; `seen` = AR@100 on seen categories.", ""]
    for protocol in dict.fromkeys(table["protocol"]) if "protocol" in table else ():
        runs = ", ".join(table.loc[table["protocol"] == protocol, "run"])
        parts += [f"Protocol `{protocol}` ({PROTOCOL_TEXT.get(protocol, 'see eval/<run>.json')}): {runs}.", ""]
    notes = capped_budget_notes(table)
    if notes:
        parts += [" ".join(notes), ""]
    for label in ("mask", "box"):
        columns = ["run"] + [c for c in table.columns if c.startswith(f"{label} ") and table[c].notna().any()]
        if table[columns[1:]].notna().any().any():
            parts += [f"## {label}", "", markdown_table(table, columns), ""]
    if table["run"].str.contains("@seed").any():
        pairs = [(run, "baseline") for run in ("ggn", "two_tower", "pa_proposals")]
        parts.append(replicate_markdown(table, pairs))
    write_text(md_path, "\n".join(parts))


def evaluation_paths(exp: Path, replicate_dirs: Sequence[Path] = ()) -> dict[str, Path]:
    """Evaluation name -> json: the experiment's own, then each replicate branch's as `<name>@seed<k>`."""
    paths = {p.stem: p for p in sorted((exp / "eval").glob("*.json"))}
    for branch in map(Path, replicate_dirs):
        k = int(branch.name.removeprefix("seed-"))
        paths.update({f"{p.stem}@seed{k}": p for p in sorted((branch / "eval").glob("*.json"))})
    return paths


def report_experiment(exp_dir: str | os.PathLike, val_json: str | os.PathLike, image_root: str | os.PathLike,
                      unseen_ids: Sequence[int], options: ReportOptions,
                      replicate_dirs: Sequence[str | os.PathLike] = ()) -> dict:
    """summary.csv/.md and plots/ of everything the stages wrote under `exp_dir` (results/<experiment>).

    Every `eval/*.json` becomes a summary row and an AR@k curve; every training log (PA and
    `detector/*/log.jsonl`) a training curve; `options.comparison_runs` (else the first two
    runs with predictions) are drawn side by side on val images. Evaluations of replicate
    branches (`replicate_dirs`, results/<experiment>/seed-<k>) join as `<name>@seed<k>`.

    Returns:
        {"summary": path of summary.csv, "runs": the evaluation names}.

    Raises:
        FileNotFoundError: `exp_dir/eval` holds no evaluation json.
    """
    from oln.plots import plot_ar_curves, plot_training_curves

    exp = Path(exp_dir)
    eval_paths = evaluation_paths(exp, [Path(d) for d in replicate_dirs])
    if not eval_paths:
        raise FileNotFoundError(f"{exp / 'eval'}: no evaluation json")
    write_summary(summary_table(eval_paths), exp / "summary.csv", exp / "summary.md", f"Experiment {exp.name}")
    plot_ar_curves({name: read_json(path) for name, path in eval_paths.items()}, exp / "plots" / "ar_curves.png",
                   title=exp.name)
    logs = {"pa": exp / "pa" / "log.jsonl"}
    logs.update({p.parent.name: p for p in sorted((exp / "detector").glob("*/log.jsonl"))})
    plot_training_curves({k: v for k, v in logs.items() if v.exists()}, exp / "plots" / "training_curves.png")
    predictions = {run: exp / "detector" / run / "predictions.json" for run in options.comparison_runs}
    predictions = {run: path for run, path in predictions.items() if path.exists()}
    if not predictions:
        predictions = {p.parent.name: p for p in sorted((exp / "detector").glob("*/predictions.json"))[:2]}
    plot_comparison(val_json, image_root, predictions, unseen_ids, options, exp / "plots" / "baseline_vs_ggn.png")
    return {"summary": str(exp / "summary.csv"), "runs": list(eval_paths)}


def plot_comparison(val_json: str | os.PathLike, image_root: str | os.PathLike,
                    predictions: dict[str, str | os.PathLike], unseen_ids: Sequence[int],
                    options: ReportOptions, path: str | os.PathLike) -> None:
    """The same val images for each run: its top-k masks, unseen GT outlined (green found, red missed).

    An unseen object counts as found when one of the run's top-100 detections
    overlaps it with mask IoU >= 0.5.
    """
    import matplotlib.pyplot as plt
    from pycocotools import mask as mask_utils

    from oln.data.coco import UnreadableImage, annotation_to_rle, load_image
    from oln.plots import draw_outlines, overlay_masks, save_figure
    from oln.rle import decode_rle

    gt = read_json(val_json)
    unseen = set(int(i) for i in unseen_ids)
    anns_by_image: dict[int, list[dict]] = {}
    for ann in gt["annotations"]:
        if int(ann["category_id"]) in unseen and not ann.get("iscrowd", 0):
            anns_by_image.setdefault(ann["image_id"], []).append(ann)
    dets_by_run = {name: _group_by_image(read_json(p)) for name, p in predictions.items()}
    images = [im for im in sorted(gt["images"], key=lambda im: im["id"]) if im["id"] in anns_by_image]
    images = images[: options.comparison_images]
    names = list(predictions)
    fig, axes = plt.subplots(max(1, len(images)), len(names), figsize=(3.2 * len(names), 3.2 * max(1, len(images))),
                             squeeze=False)
    for row, info in enumerate(images):
        try:
            pixels = load_image(Path(image_root) / info["file_name"], (info["height"], info["width"]))
        except UnreadableImage:
            continue
        h, w = pixels.shape[:2]
        gt_rles = [annotation_to_rle(a, h, w) for a in anns_by_image[info["id"]]]
        gt_masks = [mask_utils.decode(r).astype(bool) for r in gt_rles]
        for col, name in enumerate(names):
            dets = sorted(dets_by_run[name].get(info["id"], []), key=lambda d: -d["score"])
            top = [decode_rle(d["segmentation"]) for d in dets[: options.comparison_top_k] if "segmentation" in d]
            found = _found(gt_rles, [d["segmentation"] for d in dets[:100] if "segmentation" in d])
            ax = axes[row, col]
            ax.imshow(overlay_masks(pixels, top))
            draw_outlines(ax, gt_masks, ["lime" if f else "red" for f in found], width=1.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"{name} (top {options.comparison_top_k})")
            ax.set_xlabel(f"unseen found@100: {sum(found)}/{len(found)}", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def _group_by_image(records: list[dict]) -> dict[int, list[dict]]:
    grouped: dict[int, list[dict]] = {}
    for record in records:
        grouped.setdefault(record["image_id"], []).append(record)
    return grouped


def _found(gt_rles: list[dict], det_segms: list[dict]) -> list[bool]:
    from pycocotools import mask as mask_utils

    if not gt_rles:
        return []
    if not det_segms:
        return [False] * len(gt_rles)
    dets = [{"size": s["size"], "counts": s["counts"].encode() if isinstance(s["counts"], str) else s["counts"]}
            for s in det_segms]
    ious = np.asarray(mask_utils.iou(dets, gt_rles, [0] * len(gt_rles)))
    return [bool(v) for v in (ious.max(axis=0) >= 0.5)]


REPLICATE_METRICS = ("mask AR@100", "box AR@100", "mask AR@1000", "mask AUC")


def replicate_metrics(table: pd.DataFrame) -> tuple[str, ...]:
    """`REPLICATE_METRICS` the table has, mask AR at its largest evaluated budget in place of AR@1000."""
    evaluated = [k for k in SUMMARY_KS if k > 100 and f"mask AR@{k}" in table and table[f"mask AR@{k}"].notna().any()]
    largest = f"mask AR@{max(evaluated)}" if evaluated else ""
    metrics = (largest if m == "mask AR@1000" else m for m in REPLICATE_METRICS)
    return tuple(m for m in metrics if m in table)


def split_replicate(name: str) -> tuple[str, int]:
    """(`run`, k) of an evaluation name `<run>@seed<k>`; a plain name is replicate 0."""
    run, sep, seed = name.rpartition("@seed")
    return (run, int(seed)) if sep and seed.isdigit() else (name, 0)


def replicate_table(table: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Per run: number of replicates, mean and sample standard deviation of `metrics` over them.

    `metrics` defaults to `replicate_metrics(table)`.
    """
    metrics = replicate_metrics(table) if metrics is None else metrics
    keys = table["run"].map(split_replicate)
    grouped = table.assign(base=[k[0] for k in keys]).groupby("base", sort=False)
    rows = []
    for base, group in grouped:
        row: dict = {"run": base, "replicates": len(group)}
        for metric in metrics:
            row[f"{metric} mean"] = round(float(group[metric].mean()), 2)
            row[f"{metric} std"] = round(float(group[metric].std(ddof=1)), 2) if len(group) > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def paired_differences(table: pd.DataFrame, run: str, reference: str,
                       metric: str = "mask AR@100") -> pd.DataFrame:
    """`run` minus `reference` in `metric` for every replicate both have (one row per seed)."""
    values: dict[str, dict[int, float]] = {run: {}, reference: {}}
    for name, value in zip(table["run"], table[metric]):
        base, k = split_replicate(name)
        if base in values:
            values[base][k] = float(value)
    seeds = sorted(set(values[run]) & set(values[reference]))
    return pd.DataFrame({"replicate": seeds,
                         reference: [values[reference][k] for k in seeds],
                         run: [values[run][k] for k in seeds],
                         "difference": [round(values[run][k] - values[reference][k], 2) for k in seeds]})


def replicate_markdown(table: pd.DataFrame, pairs: Sequence[tuple[str, str]],
                       metric: str = "mask AR@100") -> str:
    """Markdown: mean ± std per run over replicates, then the paired differences of each pair."""
    metrics = replicate_metrics(table)
    summary = replicate_table(table, metrics)
    lines = ["## replicates", "", "| run | replicates | " + " | ".join(metrics) + " |",
             "|---|---|" + "---|" * len(metrics)]
    for _, row in summary.iterrows():
        cells = [f"{row[f'{m} mean']:.1f} ± {row[f'{m} std']:.1f}" if not pd.isna(row[f"{m} std"])
                 else f"{row[f'{m} mean']:.1f}" for m in metrics]
        lines.append(f"| {row['run']} | {row['replicates']} | " + " | ".join(cells) + " |")
    for run, reference in pairs:
        diffs = paired_differences(table, run, reference, metric)
        if diffs.empty:
            continue
        d = diffs["difference"]
        spread = f" ± {d.std(ddof=1):.1f}" if len(d) > 1 else ""
        lines += ["", f"Paired {metric}, {run} − {reference} per replicate: "
                  + ", ".join(f"seed {k}: {v:+.1f}" for k, v in zip(diffs["replicate"], d))
                  + f"; mean {d.mean():+.1f}{spread}; positive in {int((d > 0).sum())} of {len(d)}."]
    return "\n".join(lines) + "\n"
