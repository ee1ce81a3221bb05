"""`replicates`: dry-run job counts of the seed branches and the report's mean ± std / paired differences."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from test_workflow import copy_workflow

from oln.report import capped_budget_notes, paired_differences, replicate_table, split_replicate

# Default config: 3 detector runs (baseline, ggn, two_tower); 1 pseudo-GT source (train) x 2 shards.
SINGLE = {"train_detector": 3, "predict": 3, "evaluate": 4, "train_pa": 1, "extract_pseudo": 2, "total": 21}


REPO = Path(__file__).resolve().parents[1]


def planned(workdir: Path, *config: str) -> dict[str, int]:
    """Job counts of a dry run from scratch with `--config` overrides."""
    done = subprocess.run(["snakemake", "-n", "--cores", "2", "--config", *config], cwd=workdir,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    stats = done.stdout[done.stdout.index("Job stats"):]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M)}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("replicates"))


def test_one_replicate_is_the_plain_dag(workdir):
    jobs = planned(workdir, "replicates=1")
    assert {k: jobs[k] for k in SINGLE} == SINGLE


def test_detector_replicates_repeat_only_the_detector_stages(workdir):
    jobs = planned(workdir, "replicates=3", "replicates_from=detector")
    assert (jobs["train_detector"], jobs["predict"], jobs["evaluate"]) == (9, 9, 10)
    assert (jobs["train_pa"], jobs["extract_pseudo"], jobs["merge_pseudo"]) == (1, 2, 1)
    assert jobs["total"] == SINGLE["total"] + 6 * 3


def test_synthesis_replicates_repeat_the_whole_chain(workdir):
    jobs = planned(workdir, "replicates=3", "replicates_from=synthesis")
    for k in (1, 2):
        assert jobs[f"seed{k}_synthesize"] == jobs[f"seed{k}_train_pa"] == jobs[f"seed{k}_merge_pseudo"] == 1
        assert (jobs[f"seed{k}_train_detector"], jobs[f"seed{k}_evaluate"]) == (3, 4)
    assert (jobs["train_detector"], jobs["report"]) == (3, 1)


def test_report_gives_mean_std_and_paired_differences():
    table = pd.DataFrame({"run": ["baseline", "ggn", "baseline@seed1", "ggn@seed1", "pa_proposals"],
                          "mask AR@100": [20.0, 24.0, 22.0, 25.0, 36.0]})
    assert split_replicate("two_tower@seed12") == ("two_tower", 12)
    summary = replicate_table(table, metrics=["mask AR@100"]).set_index("run")
    assert summary.loc["ggn", "mask AR@100 mean"] == 24.5
    assert summary.loc["baseline", "mask AR@100 std"] == pytest.approx(1.41, abs=0.01)
    assert summary.loc["pa_proposals", "replicates"] == 1
    diffs = paired_differences(table, "ggn", "baseline")
    assert diffs["difference"].tolist() == [4.0, 3.0]


def test_replicate_table_shows_the_largest_evaluated_budget():
    table = pd.DataFrame({"run": ["baseline", "baseline@seed1"], "mask AR@100": [20.0, 22.0],
                          "mask AR@300": [25.0, 27.0], "mask AR@1000": [float("nan")] * 2})
    summary = replicate_table(table).set_index("run")
    assert summary.loc["baseline", "mask AR@300 mean"] == 26.0
    assert "mask AR@1000 mean" not in summary


def test_summary_says_where_a_run_has_fewer_detections_than_the_budget():
    table = pd.DataFrame({"run": ["ggn", "pa_proposals", "old"], "max detections per image": [300, 20, float("nan")]})
    notes = capped_budget_notes(table)
    assert notes == ["`ggn` has at most 300 detections per image: its AR@k for k = 1000 is its AR@300.",
                     "`pa_proposals` has at most 20 detections per image: its AR@k for k = 30, 100, 300, 1000 "
                     "is its AR@20."]
