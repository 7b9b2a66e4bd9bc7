"""Environment check: ``uniovseg-check-env [--build-model]`` (or ``python -m uniovseg.check_env``).

Reports the versions of everything uniovseg depends on, whether a GPU is visible, and which
deformable-attention kernels are compiled. With ``--build-model`` it also builds the model stack
from a config (a tiny one by default, random weights) and runs one forward pass on a synthetic
image, so a new machine is known to work end to end before any data is downloaded.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import platform
import sys
import time
import warnings
from collections.abc import Callable

# The config --build-model uses by default: packaged, so the check works from any folder.
DEFAULT_CONFIG = "tiny/stage1_tiny.yaml"


def _distribution_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "NOT INSTALLED"


def _import_status(module: str) -> str:
    try:
        importlib.import_module(module)
    except Exception as error:  # report any import failure, whatever its type
        return f"import FAILED: {type(error).__name__}: {error}"
    return "imports"


def _torch_rows() -> list[tuple[str, str]]:
    import torch

    rows = [
        ("torch", f"{torch.__version__} (CUDA build {torch.version.cuda or 'none'})"),
        ("torch threads", str(torch.get_num_threads())),
    ]
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        rows.append(("CUDA devices", names))
    else:
        rows.append(("CUDA devices", "none (CPU only)"))
    return rows


def _detectron2_rows() -> list[tuple[str, str]]:
    version = _distribution_version("sal-detectron2")
    status = _import_status("detectron2.engine")
    compiled = importlib.util.find_spec("detectron2._C") is not None
    return [
        ("detectron2", f"{version} ({status}; compiled _C: {'yes' if compiled else 'no, unused'})")
    ]


def _op_rows() -> list[tuple[str, str]]:
    try:
        from uniovseg.layers.ms_deform_attn import compiled_backends
    except ImportError as error:
        return [("MSDeformAttn op", f"unavailable: {error}")]
    backends = sorted(compiled_backends())
    if backends:
        return [("MSDeformAttn op", f"compiled kernels: {', '.join(backends)}")]
    return [("MSDeformAttn op", "not compiled: the PyTorch path is used (see README to build)")]


def environment_report() -> list[tuple[str, str]]:
    """Returns (name, value) rows describing this machine's uniovseg environment."""
    rows = [
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("platform", platform.platform()),
        ("uniovseg", _distribution_version("uniovseg")),
    ]
    rows += _torch_rows()
    rows.append(("torchvision", _distribution_version("torchvision")))
    rows += _detectron2_rows()
    for label, dist, module in [
        ("open_clip", "open_clip_torch", "open_clip"),
        ("timm", "timm", "timm"),
        ("panopticapi", "panopticapi-lite", "panopticapi"),
        ("pycocotools", "pycocotools", "pycocotools.mask"),
        ("numpy", "numpy", "numpy"),
        ("opencv", "opencv-python-headless", "cv2"),
    ]:
        rows.append((label, f"{_distribution_version(dist)} ({_import_status(module)})"))
    rows += _op_rows()
    return rows


def _print_rows(rows: list[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name.ljust(width)}  {value}")


def _timed(label: str, function: Callable[[], object]) -> object:
    start = time.perf_counter()
    result = function()
    print(f"  {label}: {time.perf_counter() - start:.2f} s")
    return result


def build_model_report(config_file: str, opts: list[str], image_size: int) -> None:
    """Builds the model from `config_file` (+ overrides) and runs one forward pass.

    Args:
        config_file: A config path, or the name of a packaged config (``"tiny/stage1_tiny.yaml"``).
    """
    import torch

    from uniovseg.model_check import build_and_run
    from uniovseg.model_zoo import resolve_config_file

    config_file = resolve_config_file(config_file)
    print(f"Building the model stack from {config_file} (random weights)")
    torch.manual_seed(0)
    summary = _timed(
        "build + forward",
        lambda: build_and_run(config_file=config_file, opts=opts, image_size=image_size),
    )
    _print_rows(list(summary.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--build-model", action="store_true", help="also build the model and run one forward pass"
    )
    parser.add_argument(
        "--config-file",
        default=DEFAULT_CONFIG,
        help="config used by --build-model: a path or a packaged config name (default: "
        f"{DEFAULT_CONFIG}, the tiny CPU config)",
    )
    parser.add_argument("--image-size", type=int, default=128, help="side of the test image")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    # torch's own deprecation notices (torch.jit.script) are noise for a user of this report.
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch")

    print("uniovseg environment")
    rows = environment_report()
    _print_rows(rows)
    failed = [name for name, value in rows if "FAILED" in value or "NOT INSTALLED" in value]
    if failed:
        print(f"ERROR: missing or broken: {', '.join(failed)}; run `bash scripts/setup.sh`")
        return 1
    if args.build_model:
        try:
            build_model_report(args.config_file, args.opts, args.image_size)
        except FileNotFoundError as error:  # an unknown config: the message lists the packaged ones
            print(f"ERROR: {error}")
            return 2
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
