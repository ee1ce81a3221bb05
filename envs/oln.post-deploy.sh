#!/usr/bin/env bash
# Run by Snakemake inside the new envs/oln.yaml environment, once, right after creating it.
# It runs in Snakemake's working directory, which must be the repository root (the default;
# with --directory elsewhere this fails with a message instead of installing the wrong thing).
set -euo pipefail
if ! grep -q '^name = "oln"' pyproject.toml 2>/dev/null; then
    echo "envs/oln.post-deploy.sh: $(pwd) is not the oln repository root; run snakemake from there" >&2
    exit 1
fi
python -m pip install --no-deps --no-build-isolation -e .
