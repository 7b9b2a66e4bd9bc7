#!/usr/bin/env python
"""Writes the synthetic world: SA-1B-style masks, captions, a labelled eval set, CLIP pretraining.

Example::

    python datasets/prepare_synthetic.py --root datasets/synthetic --seed 0
    # caption rows also carry their ground-truth entities (a perfect parser's; stage 2 with
    # ENTITY_SOURCE auto then uses them instead of parsing)
    python datasets/prepare_synthetic.py --root datasets/synthetic --seed 0 --entities refined

The layout is documented in :mod:`uniovseg.data.synthetic.generate`; the datasets are registered
by ``uniovseg.data.datasets`` from ``$UNIOVSEG_SYNTHETIC_ROOT`` (default ./datasets/synthetic).
"""

import argparse
import os

from uniovseg.data.synthetic import SplitCounts, generate_synthetic_world, load_world
from uniovseg.logs import setup_logging


def main(argv=None) -> None:
    defaults = SplitCounts()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="datasets/synthetic", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="master seed (same seed, same bytes)")
    parser.add_argument("--num-sa1b", type=int, default=defaults.sa1b)
    parser.add_argument("--num-captions", type=int, default=defaults.captions)
    parser.add_argument("--num-eval", type=int, default=defaults.eval)
    parser.add_argument("--num-pretrain", type=int, default=defaults.pretrain)
    parser.add_argument("--image-size", type=int, default=256, help="scene side in pixels")
    parser.add_argument(
        "--world", default=None, help="world definition YAML/JSON (default: packaged)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="rendering processes (the output does not depend on it)",
    )
    parser.add_argument(
        "--entities",
        choices=("caption", "refined"),
        default="",
        help="also write each caption row's ground-truth entities, of its refined caption or of "
        "its noisy caption (stage 2 then uses them with ENTITY_SOURCE auto/manifest)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a world already in --root"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    setup_logging()

    world = load_world(args.world)
    counts = SplitCounts(args.num_sa1b, args.num_captions, args.num_eval, args.num_pretrain)
    summary = generate_synthetic_world(
        args.root,
        world=world,
        seed=args.seed,
        counts=counts,
        image_size=args.image_size,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        workers=args.workers,
        entities=args.entities,
    )
    total = sum(summary.images.values())
    print(f"world '{world.name}' (seed {args.seed}, {args.image_size}px) written to {args.root}")
    for split, n in summary.images.items():
        print(f"  {split:9s} {n:6d} images")
    print(
        f"  {summary.sa1b_masks} SA-1B masks, {summary.eval_segments} labelled eval segments, "
        f"{len(world.things)} thing + {len(world.stuff)} stuff classes"
    )
    print(
        f"  {total} images in {summary.seconds:.1f} s ({total / max(summary.seconds, 1e-9):.0f}/s)"
    )


if __name__ == "__main__":
    main()
