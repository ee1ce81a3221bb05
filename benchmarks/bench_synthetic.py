"""Generation speed of the synthetic open-world dataset on one core.

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/bench_synthetic.py [--image-size 128] [--out DIR]

Prints images per second (wall clock and CPU time) for the default 700 images
(400 train + 100 val + 200 unlabeled), PNG encoding and json writing included.
Target (issue 2): at least 200 images/s at 128 px.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2

from oln.data.synthetic import SPLITS, SyntheticOptions, synthesize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--out", type=Path, help="output folder (default: a temporary one)")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        options = SyntheticOptions(image_size=args.image_size)
        start, cpu_start = time.perf_counter(), time.process_time()
        counts = synthesize(out, options)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    images = sum(counts[s]["images"] for s in SPLITS)
    print(f"{images} images at {args.image_size} px: {images / wall:.0f} images/s wall ({wall:.2f} s), "
          f"{images / cpu:.0f} images/s CPU ({cpu:.2f} s)")


if __name__ == "__main__":
    main()
