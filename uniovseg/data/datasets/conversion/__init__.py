"""Converters from the official benchmark downloads to the layouts registered by
:mod:`uniovseg.data.datasets.benchmarks` (entry points: ``datasets/prepare_*.py``).

Each family module holds pure label-map functions (numpy in, numpy out; tested on hand-made
arrays) and a ``prepare_*`` function that walks the official folder layout and writes the
converted files, skipping outputs that already exist unless ``overwrite=True``.
"""
