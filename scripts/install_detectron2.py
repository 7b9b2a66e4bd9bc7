"""Installs detectron2 from the package registry into the current Python environment.

detectron2 is not on PyPI under its own name. The usable registry copy is the wheel
``sal-detectron2==0.7.2`` (detectron2's Python code from upstream main, 2024-04, Apache-2.0,
import name ``detectron2``). Its only file is tagged for CPython 3.10 and carries a stale compiled
``detectron2/_C`` for 3.10 plus a stray top-level ``tools`` package, so pip refuses it on 3.11.
This script downloads it, checks its sha256 (the set-up fails loudly if the registry file ever
changes or disappears), drops the stale binary and the stray package, re-tags it as a pure-Python
``py3-none-any`` wheel, rewrites RECORD and installs the result. Nothing of detectron2 that this
project uses needs ``_C``.

Usage: ``python scripts/install_detectron2.py [--cache-dir DIR]`` (idempotent: does nothing when
the re-tagged wheel is already installed).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DIST_NAME = "sal-detectron2"
VERSION = "0.7.2"
UPSTREAM_FILE = "sal_detectron2-0.7.2-cp310-none-any.whl"
UPSTREAM_SHA256 = "491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561"
RETAGGED_FILE = "sal_detectron2-0.7.2-py3-none-any.whl"


def _fail(message: str) -> None:
    sys.stderr.write(f"install_detectron2: ERROR: {message}\n")
    raise SystemExit(1)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_installed() -> bool:
    try:
        return importlib.metadata.version(DIST_NAME) == VERSION
    except importlib.metadata.PackageNotFoundError:
        return False


def _download(cache_dir: Path) -> Path:
    wheel = cache_dir / UPSTREAM_FILE
    if wheel.exists() and _sha256(wheel) == UPSTREAM_SHA256:
        return wheel
    cache_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--python-version", "3.10", "--dest", str(cache_dir), f"{DIST_NAME}=={VERSION}",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not wheel.exists():
        _fail(
            f"could not download {DIST_NAME}=={VERSION} ({UPSTREAM_FILE}) from the package "
            f"registry; pip said:\n{result.stdout}\n{result.stderr}\n"
            "detectron2 has no other registry source that works here; see "
            "../shared/notes/environment.md or install detectron2 from source yourself."
        )
    actual = _sha256(wheel)
    if actual != UPSTREAM_SHA256:
        _fail(
            f"{wheel} has sha256 {actual}, expected {UPSTREAM_SHA256}: the registry file changed. "
            "Refusing to install an unverified detectron2; review the new wheel and update "
            "UPSTREAM_SHA256 in scripts/install_detectron2.py if it is trustworthy."
        )
    return wheel


def _keep_member(name: str) -> bool:
    """Drops the stale CPython-3.10 binary and the stray top-level `tools` package."""
    if name.startswith("detectron2/_C.") and name.endswith(".so"):
        return False
    return not name.startswith("tools/")


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _retag(source: Path, target: Path) -> None:
    """Writes a py3-none-any copy of `source` with a RECORD that matches its new contents."""
    with zipfile.ZipFile(source) as src:
        members = [info for info in src.infolist() if _keep_member(info.filename)]
        dist_info = next(
            info.filename.split("/")[0] for info in members if info.filename.endswith("/WHEEL")
        )
        record_name = f"{dist_info}/RECORD"
        records = []
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as dst:
            for info in members:
                if info.filename == record_name or info.is_dir():
                    continue
                data = src.read(info.filename)
                if info.filename == f"{dist_info}/WHEEL":
                    lines = [
                        line
                        for line in data.decode().splitlines()
                        if not line.startswith(("Tag:", "Root-Is-Purelib:"))
                    ]
                    lines += ["Root-Is-Purelib: true", "Tag: py3-none-any"]
                    data = ("\n".join(lines) + "\n").encode()
                dst.writestr(info.filename, data)
                records.append(_record_line(info.filename, data))
            records.append(f"{record_name},,")
            dst.writestr(record_name, "\n".join(records) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path.home() / ".cache" / "uniovseg" / "wheels",
        help="where the downloaded and re-tagged wheels are kept between runs",
    )
    args = parser.parse_args()
    if _is_installed():
        print(f"install_detectron2: {DIST_NAME}=={VERSION} already installed")
        return
    upstream = _download(args.cache_dir)
    with tempfile.TemporaryDirectory() as tmp:
        retagged = Path(tmp) / RETAGGED_FILE
        _retag(upstream, retagged)
        command = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", str(retagged)]
        if subprocess.run(command).returncode != 0:
            _fail(f"pip could not install the re-tagged wheel {retagged}")
    print(f"install_detectron2: installed {DIST_NAME}=={VERSION} (re-tagged py3-none-any)")


if __name__ == "__main__":
    main()
