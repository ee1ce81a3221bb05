"""Slurm integration: Snakemake jobs through the shipped profile (slurm/config.yaml) on a real cluster.

A single-node Slurm cluster is started on this machine by tests/slurm/cluster.sh (needs root
and apt). Opt-in: set OLN_SLURM_TEST=1 (CI does). The full tiny DAG through Slurm takes
minutes, so it also needs OLN_SLURM_FULL=1. Every Snakemake job through Slurm costs about
15-45 s (Snakemake starts twice inside each job, and the plugin polls squeue with a growing
interval).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLUSTER_SCRIPT = REPO / "tests" / "slurm" / "cluster.sh"
PROFILE = REPO / "slurm" / "config.yaml"
PROBE_CPUS = min(2, os.cpu_count() or 1)

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(
        os.environ.get("OLN_SLURM_TEST") != "1",
        reason="Slurm tests are opt-in: set OLN_SLURM_TEST=1 (starts a local Slurm cluster, needs root)",
    ),
]


def cluster(action: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `tests/slurm/cluster.sh <action>`."""
    command = ["bash", str(CLUSTER_SCRIPT), action]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running local cluster; stopped at the end unless it was already running before."""
    was_running = cluster("status").returncode == 0
    started = cluster("start")
    if started.returncode != 0:
        cluster("stop")
        pytest.fail(f"cluster.sh start failed:\n{started.stdout}\n{started.stderr}")
    yield
    if not was_running:
        stopped = cluster("stop")
        assert stopped.returncode == 0, stopped.stderr


def run_snakemake(workdir: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """`snakemake --profile slurm ...` in `workdir`. On timeout the test fails instead of hanging:
    Snakemake gets SIGINT (it then cancels its Slurm jobs and exits; SIGTERM would make it wait
    for every submitted job); if it is still there 60 s later it is killed and the jobs of its
    run (the plugin names them by its run ID) are cancelled."""
    command = ["snakemake", "--profile", "slurm", *args]
    with subprocess.Popen(command, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True) as process:
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)
            try:
                output, _ = process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                output, _ = process.communicate()
                run_id = re.search(r"SLURM run ID: (\S+)", output)
                if run_id:
                    subprocess.run(["scancel", "--name", run_id.group(1)], check=False)
            pytest.fail(f"snakemake {' '.join(args)} still running after {timeout} s:\n{output[-4000:]}")
    return subprocess.CompletedProcess(command, process.returncode, output, "")


def throwaway_workflow(workdir: Path, snakefile: str) -> Path:
    """A workflow directory with `snakefile` and a copy of the shipped profile as ./slurm."""
    (workdir / "slurm").mkdir(parents=True)
    shutil.copy2(PROFILE, workdir / "slurm" / "config.yaml")
    (workdir / "Snakefile").write_text(snakefile)
    return workdir


def slurm_job(job_id: str) -> dict[str, str]:
    """`scontrol show job` as key -> value (finished jobs stay visible for MinJobAge)."""
    shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True)
    return dict(re.findall(r"(\w+)=(\S*)", shown.stdout))


@pytest.fixture(scope="module")
def probe_run(slurm_cluster, tmp_path_factory) -> Path:
    """A two-rule workflow through the profile: `probe` (CPUs, memory, time) and `gpu_probe`
    (one GPU: the test cluster's GPUs are fake, only their scheduling is real)."""
    workdir = throwaway_workflow(tmp_path_factory.mktemp("probe"), f"""
rule all:
    input: "out/probe.txt", "out/gpu_probe.txt"

rule probe:
    output: "out/probe.txt"
    log: "logs/probe.log"
    threads: {PROBE_CPUS}
    resources: mem_mb=300, runtime=3
    shell: "(echo job_id=$SLURM_JOB_ID; echo threads={{threads}}) > {{output}} 2> {{log}}"

rule gpu_probe:
    output: "out/gpu_probe.txt"
    log: "logs/gpu_probe.log"
    resources: gpu=1, mem_mb=300, runtime=3
    shell: "echo job_id=$SLURM_JOB_ID > {{output}} 2> {{log}}"
""")
    done = run_snakemake(workdir, "--cores", "all", timeout=240)
    assert done.returncode == 0, done.stdout[-4000:]
    return workdir


def read_probe(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().split())


def test_profile_runs_a_job(probe_run):
    probe = read_probe(probe_run / "out/probe.txt")
    assert probe["job_id"].isdigit(), "the rule did not run inside a Slurm job"
    assert probe["threads"] == str(PROBE_CPUS)
    assert (probe_run / "logs/probe.log").is_file()
    # slurm-keep-successful-logs: the Slurm log of a successful job is kept
    assert (probe_run / f".snakemake/slurm_logs/rule_probe/{probe['job_id']}.log").is_file()
    # the rule's threads and resources became the Slurm request
    job = slurm_job(probe["job_id"])
    assert job["JobState"] == "COMPLETED"
    assert job["NumCPUs"] == str(PROBE_CPUS)
    assert job["MinMemoryNode"] == "300M"
    assert job["TimeLimit"] == "00:03:00"


def test_gpu_resource_becomes_a_slurm_gpu_request(probe_run):
    """Plugin 2.8.0 turns the resource `gpu` (not `gpus`) into `sbatch --gpus`."""
    probe = read_probe(probe_run / "out/gpu_probe.txt")
    job = slurm_job(probe["job_id"])
    assert job["JobState"] == "COMPLETED"
    assert re.search(r"gpu:1$", job.get("TresPerJob", "")), job.get("TresPerJob")
    cpu_job = slurm_job(read_probe(probe_run / "out/probe.txt")["job_id"])
    assert "gpu" not in cpu_job.get("TresPerJob", "")


def test_failing_job_is_reported_not_hung(slurm_cluster, tmp_path):
    """A job that fails in Slurm ends the run with an error naming the rule, within a time limit."""
    workdir = throwaway_workflow(tmp_path, """
rule doomed_step:
    output: "out/never.txt"
    log: "logs/doomed_step.log"
    resources: mem_mb=200, runtime=2
    shell: "echo this step fails on purpose > {log}; exit 1"
""")
    done = run_snakemake(workdir, "--cores", "all", "--retries", "0", timeout=120)
    assert done.returncode != 0
    assert "Error in rule doomed_step" in done.stdout
    assert re.search(r"SLURM-job '\d+' failed", done.stdout), done.stdout[-4000:]
    assert "this step fails on purpose" in (workdir / "logs/doomed_step.log").read_text()
    assert not (workdir / "out/never.txt").exists()


def copy_repository(dest: Path) -> Path:
    """The repository's files (tracked and untracked, not ignored: no results/) copied to `dest`."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout
    for rel in filter(None, listed.split("\0")):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("OLN_SLURM_FULL") != "1",
                    reason="the tiny DAG through Slurm takes minutes: set OLN_SLURM_FULL=1 too")
def test_tiny_workflow_through_slurm(slurm_cluster, tmp_path):
    workdir = copy_repository(tmp_path)
    # --cores all caps each rule's threads (and so its Slurm CPUs) at this machine's cores,
    # the size of the test node; small memory defaults fit a CI machine.
    done = run_snakemake(workdir, "--cores", "all", "--configfile", "config/tiny.yaml",
                         "--default-resources", "mem_mb=1000", "runtime=60", timeout=3000)
    assert done.returncode == 0, done.stdout[-6000:]

    exp = workdir / "results/tiny"
    assert (exp / "summary.csv").stat().st_size > 0
    evaluations = sorted((exp / "eval").glob("*.json"))
    assert evaluations and all(path.stat().st_size > 0 for path in evaluations)
    slurm_logs = workdir / ".snakemake/slurm_logs"
    for rule in ("train_pa", "extract_pseudo", "train_detector", "evaluate"):
        assert list((slurm_logs / f"rule_{rule}").rglob("*.log")), f"no Slurm log of rule {rule}"


@pytest.mark.slow
def test_tiny_config_baseline_branch_through_slurm(slurm_cluster, tmp_path):
    """The tiny config's data -> baseline detector -> predict -> evaluate branch, every job a Slurm job."""
    workdir = copy_repository(tmp_path)
    targets = ["results/tiny/eval/baseline.json", "results/tiny/data/preview.png"]
    done = run_snakemake(workdir, *targets, "--cores", "all", "--configfile", "config/tiny.yaml",
                         "--default-resources", "mem_mb=1000", "runtime=60", timeout=900)
    assert done.returncode == 0, done.stdout[-6000:]
    evaluation = json.loads((workdir / targets[0]).read_text())
    assert {"bbox", "segm"} <= set(evaluation) and 0.0 <= evaluation["segm"]["AR@100"] <= 1.0
    assert (workdir / targets[1]).stat().st_size > 0
    slurm_logs = list((workdir / ".snakemake/slurm_logs").rglob("*.log"))
    rules = {p.relative_to(workdir / ".snakemake/slurm_logs").parts[0] for p in slurm_logs}
    assert {"rule_synthesize", "rule_train_detector", "rule_predict", "rule_evaluate"} <= rules, rules
