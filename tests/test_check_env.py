"""The environment check reports every dependency and the op status."""

import subprocess
import sys

from uniovseg.check_env import environment_report


def test_report_names_every_dependency():
    rows = dict(environment_report())
    for name in ["torch", "detectron2", "open_clip", "panopticapi", "MSDeformAttn op"]:
        assert name in rows
    assert "imports" in rows["detectron2"]
    assert "imports" in rows["open_clip"]


def test_import_uniovseg_in_a_clean_interpreter_needs_no_cuda_and_no_op():
    code = "import uniovseg, uniovseg.config, uniovseg.layers.ms_deform_attn; print('ok')"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"CUDA_VISIBLE_DEVICES": "", "PATH": ""},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
