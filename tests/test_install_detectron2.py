"""The detectron2 installer's re-tagging: a fake cp310 wheel becomes a valid py3-none-any one."""

import base64
import hashlib
import importlib.util
import zipfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "install_detectron2.py"


@pytest.fixture(scope="module")
def installer():
    spec = importlib.util.spec_from_file_location("install_detectron2", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_fake_upstream_wheel(path: Path) -> None:
    dist_info = "sal_detectron2-0.7.2.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("detectron2/__init__.py", "__version__ = '0.7.2'\n")
        wheel.writestr("detectron2/_C.cpython-310-x86_64-linux-gnu.so", b"\x7fELF stale")
        wheel.writestr("tools/train_net.py", "print('stray')\n")
        wheel.writestr(
            f"{dist_info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: bdist_wheel\nRoot-Is-Purelib: false\n"
            "Tag: cp310-none-any\n",
        )
        wheel.writestr(f"{dist_info}/METADATA", "Name: sal-detectron2\nVersion: 0.7.2\n")
        wheel.writestr(f"{dist_info}/RECORD", "stale,,\n")


def test_retag_drops_stale_binary_and_rewrites_tags_and_record(installer, tmp_path):
    upstream = tmp_path / "upstream.whl"
    target = tmp_path / "retagged.whl"
    _write_fake_upstream_wheel(upstream)

    installer._retag(upstream, target)

    with zipfile.ZipFile(target) as wheel:
        names = set(wheel.namelist())
        assert "detectron2/__init__.py" in names
        assert not any(name.endswith(".so") for name in names)
        assert not any(name.startswith("tools/") for name in names)
        wheel_file = wheel.read("sal_detectron2-0.7.2.dist-info/WHEEL").decode()
        assert "Tag: py3-none-any" in wheel_file
        assert "Root-Is-Purelib: true" in wheel_file
        assert "cp310" not in wheel_file
        record = wheel.read("sal_detectron2-0.7.2.dist-info/RECORD").decode().splitlines()
        recorded = {line.split(",")[0]: line.split(",")[1] for line in record}
        # Every file but RECORD itself is listed with the hash of its new contents.
        assert set(recorded) == names
        for name in names - {"sal_detectron2-0.7.2.dist-info/RECORD"}:
            digest = hashlib.sha256(wheel.read(name)).digest()
            expected = "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
            assert recorded[name] == expected, name


def test_checksum_mismatch_is_refused(installer, tmp_path, monkeypatch):
    cached = tmp_path / installer.UPSTREAM_FILE
    cached.write_bytes(b"not the real wheel")

    def fake_pip_download(command, **kwargs):
        class Result:
            returncode = 0
            stdout = stderr = ""

        return Result()

    monkeypatch.setattr(installer.subprocess, "run", fake_pip_download)
    with pytest.raises(SystemExit):
        installer._download(tmp_path)


def test_installed_detectron2_is_usable():
    from detectron2.config import get_cfg
    from detectron2.evaluation import COCOPanopticEvaluator, SemSegEvaluator  # noqa: F401

    from uniovseg.config import add_uniovseg_config

    cfg = get_cfg()
    add_uniovseg_config(cfg)
    assert cfg.MODEL.UNIOVSEG.CLIP.MODEL_NAME == "convnext_large_d_320"
