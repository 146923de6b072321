"""Speed benchmarks: one script per question, each printing a table and, with --json, writing its results.

Run from the repository root as modules (they import train.py and utils/):

    python -m benchmarks.bench_step        # train.py's training step vs sentence-transformers, RR's cost, MFU
    python -m benchmarks.bench_methods     # each train.py --method's step against SimCSE's
    python -m benchmarks.bench_encode      # evaluate.py's encode, the STS test suite, the in-training evaluation
    python -m benchmarks.bench_rr_solvers  # Rank Reduction's penalty: eigh vs quadrature
    python -m benchmarks.bench_transfer    # the transfer classifier vs scikit-learn
    bash benchmarks/bench_gpu.sh           # the GPU run: step, RR solvers, encode and transfer

benchmarks/timing.py is what they share. Their flags and results are in docs/speed.md.
"""
