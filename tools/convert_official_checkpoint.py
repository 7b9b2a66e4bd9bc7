#!/usr/bin/env python
"""Converts the authors' released stage-1 checkpoint into a detectron2 checkpoint of uniovseg.

Reads the file safely (``torch.load(weights_only=True)``, pickles refused; see
``uniovseg/checkpoint.py``), maps the release's key layout to ours
(the identity: the layouts are the same), checks every name and shape strictly against our
model built from a config (on the meta device, nothing allocated), and saves
``{"model": state_dict}`` for ``MODEL.WEIGHTS``, or a model bundle (``--bundle``: config,
safetensors weights, open_clip config and model card in one folder, which
``UniOVSegPredictor.from_pretrained`` loads). Exits with status 1 on any mismatch.

Examples::

    python tools/convert_official_checkpoint.py --input stage1.pth --output uniovseg_stage1.pth
    python tools/convert_official_checkpoint.py --input stage1.pth --bundle bundles/release_stage1
    python tools/convert_official_checkpoint.py --input stage1.pth --check-only
    python tools/convert_official_checkpoint.py --manifest state_dict_shapes.json --check-only
"""

from __future__ import annotations

import argparse
import logging
import sys

from uniovseg.logs import setup_logging

logger = logging.getLogger("convert_official_checkpoint")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="the release's checkpoint (e.g. stage1.pth)")
    source.add_argument(
        "--manifest",
        help="a JSON {name: shape} manifest to check instead of a checkpoint "
        "(implies --check-only)",
    )
    parser.add_argument("--output", help="where to save the converted {'model': state_dict}")
    parser.add_argument(
        "--bundle",
        metavar="DIR",
        help="write the converted model as a model bundle in this folder (new, empty or an "
        "earlier bundle), for UniOVSegPredictor.from_pretrained",
    )
    parser.add_argument(
        "--check-only", action="store_true", help="check names and shapes, write nothing"
    )
    parser.add_argument(
        "--config-file",
        default="",
        help="uniovseg YAML config of the target model (default: the release architecture)",
    )
    parser.add_argument(
        "--only-prefix",
        action="append",
        default=[],
        metavar="PREFIX",
        help="check only names under this prefix (repeatable), e.g. sem_seg_head. for a head-only "
        "checkpoint; the output then holds only those names",
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config overrides as KEY VALUE pairs"
    )
    args = parser.parse_args(argv)
    if args.manifest:
        args.check_only = True
    if not args.check_only and not (args.output or args.bundle):
        parser.error(
            "--output or --bundle is required unless --check-only (or --manifest) is given"
        )
    if args.bundle and args.only_prefix:
        parser.error("--bundle holds the whole model: it cannot be combined with --only-prefix")
    return args


def build_config(config_file: str, opts: list[str]):
    from uniovseg.config import load_config

    cfg = load_config(config_file, opts)
    cfg.freeze()
    return cfg


def main(argv: list[str] | None = None) -> int:
    """Runs the conversion; returns the process exit status (0: layouts match)."""
    from uniovseg.modeling import checkpoint_conversion as cc

    args = parse_args(argv)
    try:
        cfg = build_config(args.config_file, args.opts)
    except (OSError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    prefixes = tuple(args.only_prefix)
    include_backbone = not prefixes or any(p.startswith("backbone") for p in prefixes)
    expected = cc.expected_layout(cfg, include_backbone=include_backbone)

    try:
        if args.manifest:
            found = cc.load_manifest(args.manifest)
            state_dict = None
        else:
            state_dict = cc.convert_official_state_dict(cc.load_checkpoint(args.input))
            found = cc.shapes_of(state_dict)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    report = cc.compare_layout(found, expected, prefixes=prefixes)
    print(report.format())
    if report.ok and not prefixes and cc.layout_digest(found) == cc.RELEASE_LAYOUT_SHA256:
        print("The layout is exactly that of the release's stage1.pth.")
    if not report.ok:
        print(
            "The checkpoint does not fit the model: check that it is the release's stage-1 "
            "checkpoint and that the config matches its architecture.",
            file=sys.stderr,
        )
        return 1
    if args.check_only:
        return 0
    if prefixes:
        state_dict = {k: v for k, v in state_dict.items() if k.startswith(prefixes)}
    if args.output:
        cc.save_detectron2_checkpoint(state_dict, args.output)
        print(f"Saved {len(state_dict)} tensors to {args.output}")
    if args.bundle:
        return write_bundle(state_dict, cfg, args)
    return 0


def write_bundle(state_dict, cfg, args: argparse.Namespace) -> int:
    """Writes the converted weights as a model bundle; returns the exit status."""
    import os

    from uniovseg.inference.model_bundle import save_state_dict_bundle

    try:
        folder = save_state_dict_bundle(
            state_dict,
            args.bundle,
            cfg=cfg,
            training_data=(
                "Image-mask pairs of SA-1B (the paper: a random 30% subset, about 3 M images); "
                "the authors' released stage-1 weights."
            ),
            source=(
                f"Converted from the authors' released checkpoint `{os.path.basename(args.input)}` "
                "by uniovseg's tools/convert_official_checkpoint.py."
            ),
        )
    except (OSError, ValueError) as e:
        print(f"error: cannot write the bundle: {e}", file=sys.stderr)
        return 1
    print(f"Saved the model bundle {folder} (load it with UniOVSegPredictor.from_pretrained)")
    return 0


if __name__ == "__main__":
    setup_logging()
    sys.exit(main())
