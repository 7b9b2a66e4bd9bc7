"""Benchmarks Uni-OVSeg: per-stage and end-to-end inference, peak memory, text-classifier build
time and training steps (issue 8). What each number means: benchmarks/README.md.

Examples::

    # the paper's configuration (ConvNeXt-L, random weights, 1024, 20x20 grid, ADE20K-150), CPU
    python tools/benchmark.py --list                      # items and estimated cost only
    python tools/benchmark.py --threads 2 --repeat 3
    python tools/benchmark.py --only 'inference*' --repeat 1
    python tools/benchmark.py --skip 'text_classifier_ade20k_847,train_*_full'
    # config overrides go last
    python tools/benchmark.py --only 'inference*' --masks model MODEL.WEIGHTS /path/model.pth
    # a quick run on the tiny configs
    python tools/benchmark.py --tiny --repeat 2
    # GPU: fp32 vs bf16, with and without torch.compile
    python tools/benchmark.py --device cuda --dtypes fp32,bf16 --compile both

Writes JSON (default benchmarks/results/benchmark.json) and markdown next to it (.md), and prints
the markdown at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from benchmark_suite.suite import (  # noqa: E402
    SuiteSettings,
    estimate_seconds,
    plan_items,
    run_suite,
)
from uniovseg.logs import setup_logging  # noqa: E402

PAPER_CONFIG = "configs/stage2/uniovseg_convnext_large_stage2.yaml"
TINY_CONFIG = "configs/tiny/stage2_tiny.yaml"
TRAIN_CONFIGS = {
    "stage1_tiny": "configs/tiny/stage1_tiny.yaml",
    "stage2_tiny": "configs/tiny/stage2_tiny.yaml",
    "stage1_full": "configs/stage1/uniovseg_convnext_large_stage1.yaml",
    "stage2_full": PAPER_CONFIG,
}
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "photos"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", default=PAPER_CONFIG, help="inference/text config")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help=f"quick run: inference on {TINY_CONFIG}, tiny training configs only",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds over the images")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before each timing")
    parser.add_argument(
        "--images",
        action="append",
        default=None,
        help="a photo file or folder, repeatable (default: $UNIOVSEG_BENCHMARK_IMAGES or "
        f"{DEFAULT_IMAGES}); none found: synthetic images",
    )
    parser.add_argument("--image-pattern", default="*", help="glob inside image folders")
    parser.add_argument("--num-images", type=int, default=2, help="images per timed round")
    parser.add_argument(
        "--image-size", type=int, default=1024, help="resize photos' longest side (0: keep)"
    )
    parser.add_argument("--vocabulary", default="ade20k_150", help="'' for masks only")
    parser.add_argument(
        "--inference-templates",
        default="name",
        help="templates of the inference item's (cached) vocabulary: 'name' builds it 14x "
        "faster than 'vild' and gives the same per-image cost (same number of embeddings)",
    )
    parser.add_argument(
        "--masks",
        choices=["synthetic", "model"],
        default="synthetic",
        help="synthetic: replace the decoder's outputs by blobs so random weights still give "
        "~60 masks per image; model: the model's own masks (trained weights via MODEL.WEIGHTS)",
    )
    parser.add_argument("--dtypes", default=None, help="comma list of fp32,bf16,fp16")
    parser.add_argument("--compile", choices=["off", "on", "both"], default=None)
    parser.add_argument("--text-vocabularies", default="ade20k_150,ade20k_847")
    parser.add_argument("--text-repeat", type=int, default=1, help="cold text-classifier builds")
    parser.add_argument(
        "--text-sample-prompts",
        type=int,
        default=0,
        help="> 0: time this many prompts and extrapolate (ADE20K-847 is 18,774 prompts)",
    )
    parser.add_argument("--train-repeat", type=int, default=3, help="timed training steps")
    parser.add_argument(
        "--skip", default="", help="comma list of item names or shell patterns to skip"
    )
    parser.add_argument(
        "--only", default="", help="comma list of item names or shell patterns to run"
    )
    parser.add_argument("--list", action="store_true", help="print items and estimates, exit")
    parser.add_argument(
        "--no-isolate", action="store_true", help="run items in this process (peaks then mix)"
    )
    parser.add_argument(
        "--output", type=Path, default=ROOT / "benchmarks" / "results" / "benchmark.json"
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ..."
    )
    return parser.parse_args(argv)


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def settings_from_args(args: argparse.Namespace) -> SuiteSettings:
    cuda = args.device.startswith("cuda")
    dtypes = args.dtypes or ("fp32,bf16" if cuda else "fp32")
    compile_arg = args.compile or ("both" if cuda else "off")
    compile_modes = {"off": [False], "on": [True], "both": [False, True]}[compile_arg]
    train_configs = dict(TRAIN_CONFIGS)
    config_file = args.config_file
    if args.tiny:
        config_file = TINY_CONFIG
        train_configs = {k: v for k, v in train_configs.items() if k.endswith("_tiny")}
    images = args.images
    if images is None:
        env = os.environ.get("UNIOVSEG_BENCHMARK_IMAGES")
        images = [env] if env else [str(DEFAULT_IMAGES)]
    return SuiteSettings(
        inference_config=str(ROOT / config_file)
        if not Path(config_file).is_absolute()
        else config_file,
        train_configs={k: str(ROOT / v) for k, v in train_configs.items()},
        opts=list(args.opts),
        device=args.device,
        threads=args.threads,
        repeat=args.repeat,
        warmup=args.warmup,
        images=list(images),
        image_pattern=args.image_pattern,
        num_images=args.num_images,
        image_size=args.image_size,
        vocabulary=args.vocabulary,
        inference_templates=args.inference_templates,
        masks=args.masks,
        dtypes=_comma_list(dtypes),
        compile_modes=compile_modes,
        text_vocabularies=_comma_list(args.text_vocabularies),
        text_repeat=args.text_repeat,
        text_sample_prompts=args.text_sample_prompts,
        train_repeat=args.train_repeat,
        skip=_comma_list(args.skip),
        only=_comma_list(args.only),
        isolate=not args.no_isolate,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    settings = settings_from_args(args)
    if args.list:
        for item in plan_items(settings):
            seconds = estimate_seconds(item, settings)
            print(f"{item.name:<36} {'~%.1f min' % (seconds / 60) if seconds else '?'}")
        return 0
    report = run_suite(settings, args.output)
    print(args.output.with_suffix(".md").read_text())
    print(f"wrote {args.output} and {args.output.with_suffix('.md')}")
    return 1 if any("error" in r for r in report["items"].values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
