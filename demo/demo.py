"""Segment folders of images from the command line (the ``uniovseg-demo`` command).

The demo lives in :mod:`uniovseg.inference.demo_cli`; run ``python demo/demo.py --help`` or
``uniovseg-demo --help`` for its options.
"""

import sys

from uniovseg.inference.demo_cli import main

if __name__ == "__main__":
    sys.exit(main())
