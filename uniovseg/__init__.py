"""uniovseg: open-vocabulary segmentation with unpaired mask-text supervision (Uni-OVSeg).

Importing the package must work on a CPU-only machine with no compiled op, no data and no
network; heavy sub-modules are imported where they are used.
"""

__version__ = "0.1.0"
