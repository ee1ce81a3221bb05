"""The parts of benchmarks/bench_gpu.py, one module per pipeline stage."""
