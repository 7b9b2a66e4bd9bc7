"""Worker process of the benchmark suite: ``python -m benchmark_suite.worker SPEC RESULT``
runs one item (see :func:`benchmark_suite.suite.worker_main`)."""

import sys

from benchmark_suite.suite import worker_main

if __name__ == "__main__":
    raise SystemExit(worker_main(sys.argv[1:]))
