"""The tiny config's whole DAG on the device, in a temporary copy of the repository."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from gpu_bench.common import REPO, Context, run_case

# ----------------------------------------------------------------------------- DAG


def run_process(command: list[str], cwd: Path, timeout: float, env: dict | None = None) -> dict:
    """Run `command` in its own process group; on timeout the group is killed."""
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        stderr += f"\n[bench_gpu] killed after {timeout:.0f} s (time budget)"
    return {"returncode": process.returncode, "stdout": stdout, "stderr": stderr}


def copy_workflow(dest: Path) -> Path:
    """What Snakemake needs (Snakefile, workflow/, config/, envs/, oln/), as tests/test_workflow.py copies it."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "workflow", "config", "envs", "oln"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest


def bench_dag(ctx: Context) -> list[dict]:
    """The tiny config through Snakemake with device cuda (a dry run with --smoke)."""
    def case() -> dict:
        workdir = copy_workflow(ctx.tmp / "dag")
        command = ["snakemake", "--cores", "all", "--configfile", "config/tiny.yaml",
                   "--config", "device=cuda", "experiment=tiny_cuda"]
        if ctx.cfg.dag_dry_run:
            command.insert(1, "-n")
        start = time.perf_counter()
        done = run_process(command, workdir, max(ctx.seconds_left(), 30.0))
        wall = time.perf_counter() - start
        if done["returncode"] != 0:
            raise RuntimeError(f"snakemake exit {done['returncode']}: {(done['stdout'] + done['stderr'])[-1500:]}")
        jobs = re.search(r"^total\s+(\d+)", done["stdout"] + done["stderr"], re.MULTILINE)
        summary = workdir / "results" / "tiny_cuda" / "summary.csv"
        return {"wall_s": round(wall, 2), "jobs": int(jobs.group(1)) if jobs else None,
                "dry_run": ctx.cfg.dag_dry_run, "summary_written": summary.exists(), "command": " ".join(command)}

    return [run_case("snakemake tiny (dry run)" if ctx.cfg.dag_dry_run else "snakemake tiny device=cuda", case)]
