"""Worker process of the benchmark suite: ``python -m uniovseg.benchmarking.worker SPEC RESULT``
runs one item (see :func:`uniovseg.benchmarking.suite.worker_main`)."""

import sys

from uniovseg.benchmarking.suite import worker_main

if __name__ == "__main__":
    raise SystemExit(worker_main(sys.argv[1:]))
