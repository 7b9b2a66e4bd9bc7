#!/usr/bin/env python
"""Exports a model's image encoder and point/box prompt decoders to ONNX, with a JSON manifest
of their inputs, outputs, frames and preprocessing (see ``uniovseg/inference/onnx_export.py``).

Examples::

    python tools/export_onnx.py --bundle bundles/stage1 --output onnx/stage1 --check \\
        --check-image ../shared/data/photos/sa_1272468.jpg
    python tools/export_onnx.py --config-file configs/tiny/stage1_tiny.yaml --output onnx/tiny \\
        MODEL.WEIGHTS output/stage1_tiny/model_final.pth

``--check`` runs an image and 1, 3 and 17 random prompts of each type through onnxruntime and
PyTorch, prints the largest differences, writes them to ``parity.json`` in the output folder,
and exits with status 1 when a decoder's difference exceeds ``--tolerance``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from uniovseg.logs import setup_logging


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--bundle", help="a model bundle folder (UniOVSegPredictor.from_pretrained)")
    model.add_argument(
        "--config-file", help="a config (path or packaged name); weights via MODEL.WEIGHTS PATH"
    )
    parser.add_argument(
        "--output", required=True, help="the export folder (new, empty or an earlier export)"
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset, 16-20 (default 17)")
    parser.add_argument(
        "--check", action="store_true", help="compare the graphs with PyTorch (onnxruntime)"
    )
    parser.add_argument("--check-image", help="image for --check (default: a synthetic picture)")
    parser.add_argument(
        "--prompt-counts", type=int, nargs="+", default=[1, 3, 17], help="prompts per check"
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-3,
        help="--check fails when a decoder's max |ONNX - PyTorch| logit exceeds this",
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config overrides, e.g. MODEL.WEIGHTS PATH"
    )
    return parser.parse_args(argv)


def _load_model(args: argparse.Namespace):
    # The export runs on the CPU: graphs are traced there and checked with onnxruntime's CPU
    # provider.
    if args.bundle:
        from uniovseg.inference import UniOVSegPredictor

        predictor = UniOVSegPredictor.from_pretrained(args.bundle, device="cpu", opts=args.opts)
        return predictor.model, os.path.abspath(args.bundle)
    from uniovseg.modeling.build import build_inference_model

    model, cfg = build_inference_model(args.config_file, opts=args.opts, device="cpu")
    source = args.config_file + (f" (weights {cfg.MODEL.WEIGHTS})" if cfg.MODEL.WEIGHTS else "")
    return model, source


def main(argv: list[str] | None = None) -> int:
    """Exports (and checks); returns the process exit status."""
    from uniovseg.atomic_files import atomic_write
    from uniovseg.inference.image_io import read_image
    from uniovseg.inference.onnx_export import (
        PARITY_FILE,
        check_opset,
        export_onnx,
        require_onnx,
    )
    from uniovseg.inference.onnx_parity import check_onnx_parity, require_onnxruntime

    args = parse_args(argv)
    try:
        # What can fail fast does, before a model that may take minutes to load.
        check_opset(args.opset)
        require_onnx()
        if args.check:
            require_onnxruntime()
        image = None
        if args.check_image:
            try:
                image = read_image(args.check_image).image
            except ValueError as e:  # ImageReadError: the reason, without the path
                raise ValueError(f"--check-image {args.check_image!r}: {e}") from None
        model, source = _load_model(args)
        export_onnx(model, args.output, opset=args.opset, source=source)
        print(f"Exported the ONNX graphs and their manifest to {os.path.abspath(args.output)}")
        if not args.check:
            return 0
        report = check_onnx_parity(
            model,
            args.output,
            image=image,
            image_name=args.check_image or "synthetic",
            prompt_counts=tuple(args.prompt_counts),
        )
    except (OSError, ImportError, KeyError, ValueError) as e:
        # OSError: missing bundles, configs, weights and folders; ImportError: no onnx or
        # onnxruntime (the message says what to install).
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report.format_table())
    with atomic_write(os.path.join(args.output, PARITY_FILE), "w", encoding="utf-8") as handle:
        json.dump({**report.to_dict(), "tolerance": args.tolerance}, handle, indent=2)
    if report.max_decoder_diff > args.tolerance:
        print(
            f"error: a decoder differs from PyTorch by {report.max_decoder_diff:.2e} > "
            f"--tolerance {args.tolerance:g}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    setup_logging()
    sys.exit(main())
