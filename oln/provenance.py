"""What produced an experiment's results: the resolved config and a provenance record.

`record_experiment` writes, under `results/<experiment>/`:
- `config.yaml`: the configuration exactly as the stages use it (the config file(s) over the
  schema defaults), so a user can see which values a run took without reading the schema;
- `provenance.json`: git commit (and whether the work tree had uncommitted changes), the
  versions of the packages the numbers depend on, the device, and the Snakemake command line.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from oln.io import write_json, write_text

# Distributions whose versions can change the numbers (pip names).
PACKAGES = ("oln", "torch", "torchvision", "numpy", "scipy", "scikit-image", "pycocotools",
            "opencv-python-headless", "pillow", "snakemake")
# Set by the Snakefile in the process that builds the DAG; jobs (local or Slurm) inherit it.
COMMAND_ENV = "OLN_SNAKEMAKE_COMMAND"


def git_state(repo: str | os.PathLike) -> dict[str, Any]:
    """Commit of `repo` and whether tracked files differ from it (None when not a git checkout)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution (None when it is not installed)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_info() -> dict[str, Any]:
    """CPU count, and CUDA devices when torch sees any."""
    import torch

    info: dict[str, Any] = {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                            "python": sys.version.split()[0], "cuda_available": torch.cuda.is_available()}
    if info["cuda_available"]:
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda_version"] = torch.version.cuda
    return info


def provenance_record(repo: str | os.PathLike, command_line: str | None) -> dict[str, Any]:
    """The provenance record of an experiment (see the module docstring)."""
    return {"git": git_state(repo), "packages": package_versions(), "device": device_info(),
            "command_line": command_line, "host": platform.node()}


def record_experiment(config: dict, out_dir: str | os.PathLike, repo: str | os.PathLike) -> dict[str, Any]:
    """Write `config.yaml` (the resolved config) and `provenance.json` under `out_dir`.

    Returns:
        the provenance record.
    """
    out_dir = Path(out_dir)
    write_text(out_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False, default_flow_style=None))
    record = provenance_record(repo, os.environ.get(COMMAND_ENV))
    write_json(out_dir / "provenance.json", record, indent=2)
    return record
