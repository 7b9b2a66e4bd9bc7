"""ONNX export on the tiny config (random weights): the image encoder and the point/box decoders
run in onnxruntime and match PyTorch for any number of prompts (the prompt axis is dynamic), the
manifest describes every tensor a user feeds, and bad inputs are refused with clear errors.

Skipped without the onnx package (export) or onnxruntime (running the graphs)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from uniovseg.inference import UniOVSegPredictor, save_pretrained
from uniovseg.inference.onnx_export import (
    DECODER_FILES,
    ENCODER_FILE,
    MANIFEST_FILE,
    PARITY_FILE,
    encoder_input,
    export_onnx,
    read_manifest,
)
from uniovseg.inference.onnx_graphs import flatten_memory, memory_layout, memory_tensor_names
from uniovseg.inference.onnx_parity import check_onnx_parity, synthetic_image
from uniovseg.layers.ms_deform_attn import MSDeformAttn

ROOT = Path(__file__).resolve().parents[1]
TINY_STAGE1 = str(ROOT / "configs" / "tiny" / "stage1_tiny.yaml")
PHOTO = ROOT.parent / "shared" / "data" / "photos" / "sa_1272468.jpg"
# Float32 graphs on the same CPU: the tiny model's logits (|x| ~ 1) agree to ~1e-6; 1e-4 leaves
# room for other CPUs' kernels while still catching any real divergence (a wrong prompt scale
# or a baked-in prompt count moves logits by 1e-1 or more).
TOLERANCE = 1e-4
# Box decoders of models trained with boxes limited to their box attend inside it: exported too.
OPTS = ["MODEL.UNIOVSEG.MASK_DECODER.BOX_ATTENTION_IN_BOX", "True"]


@pytest.fixture(scope="module")
def onnx_package():
    return pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def ort():
    return pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    return UniOVSegPredictor.from_config(TINY_STAGE1, opts=OPTS, device="cpu")


@pytest.fixture(scope="module")
def export_dir(predictor, onnx_package, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx") / "tiny"
    export_onnx(predictor.model, str(folder), opset=17, source="tiny")
    return folder


@pytest.fixture(scope="module")
def encoded(predictor):
    """(frame, PyTorch encoding, its memory tensors by name) of the synthetic picture."""
    model = predictor.model
    pixels, frame = encoder_input(model, synthetic_image())
    with torch.no_grad():
        encoding = model.encode(model.normalize(torch.from_numpy(pixels[0]))[None], [frame])
    names = memory_tensor_names(*memory_layout(model))
    tensors = [t.numpy() for t in flatten_memory(encoding.decoder_memory)]
    memory = dict(zip(names, tensors, strict=True))
    return frame, encoding, memory


def _session(ort, path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _load_tool():
    spec = importlib.util.spec_from_file_location("export_onnx", ROOT / "tools" / "export_onnx.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_manifest_describes_every_graph_input_and_output(predictor, export_dir, onnx_package):
    model = predictor.model
    manifest = read_manifest(str(export_dir))
    size = model.test_input_size
    names = memory_tensor_names(*memory_layout(model))
    encoder = manifest["image_encoder"]
    assert encoder["inputs"] == [{"name": "image", "shape": [1, 3, size, size], "dtype": "float32"}]
    assert [o["name"] for o in encoder["outputs"]] == names
    encoder_shapes = {o["name"]: o["shape"] for o in encoder["outputs"]}
    assert encoder_shapes["mask_features"] == [1, 32, size // 4, size // 4]
    for prompt_type, (input_name, width, masks) in {
        "point": ("points", 2, 4),
        "box": ("boxes", 4, 1),
    }.items():
        decoder = manifest["decoders"][prompt_type]
        assert decoder["file"] == DECODER_FILES[prompt_type]
        assert decoder["masks_per_prompt"] == masks
        prompts, *memory = decoder["inputs"]
        assert prompts == {"name": input_name, "shape": ["num_prompts", width], "dtype": "float32"}
        # Every other input is an encoder output of the same name and shape: feed by name.
        assert memory and all(encoder_shapes[i["name"]] == i["shape"] for i in memory)
        assert [o["shape"] for o in decoder["outputs"]] == [
            ["num_prompts", masks, size // 4, size // 4],
            ["num_prompts", masks],
        ]
        graph = onnx_package.load(str(export_dir / decoder["file"]))
        assert {o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")} == {17}
    pre = manifest["preprocessing"]
    assert pre["pixel_mean"] == pytest.approx(model.pixel_mean.flatten().tolist())
    assert pre["pad_value"] == model.pad_value and manifest["input_size"] == size
    assert manifest["postprocessing"]["mask_stride"] == 4
    # The export ran the deformable attention on its PyTorch path and gave the backend back.
    assert {m.backend for m in model.modules() if isinstance(m, MSDeformAttn)} == {"auto"}


@pytest.mark.parametrize("prompt_type", ["point", "box"])
@pytest.mark.parametrize("count", [1, 3, 17])
def test_decoders_match_pytorch_for_any_number_of_prompts(
    predictor, export_dir, encoded, ort, prompt_type, count
):
    model = predictor.model
    frame, encoding, memory = encoded
    decoder = _session(ort, export_dir / DECODER_FILES[prompt_type])
    rng = np.random.default_rng(count)
    height, width = frame.valid_size
    if prompt_type == "point":
        prompts = rng.uniform(0, 1, (count, 2)) * [width, height]
    else:
        corners = np.sort(rng.uniform(0, 1, (count, 2, 2)), axis=1) * [width, height]
        prompts = corners.reshape(count, 4)
    prompts = prompts.astype(np.float32)
    inputs = {i.name for i in decoder.get_inputs()}
    feeds = {name: value for name, value in memory.items() if name in inputs}
    feeds["points" if prompt_type == "point" else "boxes"] = prompts
    mask_logits, iou_logits = decoder.run(None, feeds)
    with torch.no_grad():
        reference = model.decode_prompts(
            encoding, torch.from_numpy(prompts)[None], prompt_type=prompt_type
        )
    masks = model.num_mask_outputs(prompt_type)
    assert mask_logits.shape == (count, masks, 32, 32) and iou_logits.shape == (count, masks)
    np.testing.assert_allclose(
        mask_logits, reference.mask_logits[0].numpy(), atol=TOLERANCE, rtol=0
    )
    np.testing.assert_allclose(iou_logits, reference.iou_logits[0].numpy(), atol=TOLERANCE, rtol=0)


def test_encoder_and_decoders_match_pytorch_end_to_end(predictor, export_dir, ort):
    if PHOTO.is_file():
        from uniovseg.inference.image_io import read_image

        image, name = read_image(str(PHOTO)).image, PHOTO.name
    else:  # shared/ is absent: the synthetic picture still exercises resize and padding
        image, name = synthetic_image(), "synthetic"
    report = check_onnx_parity(
        predictor.model, str(export_dir), image=image, image_name=name, prompt_counts=(2, 9)
    )
    assert report.image_size == image.shape[:2]
    assert [(r.prompt_type, r.num_prompts) for r in report.prompts] == [
        ("point", 2), ("point", 9), ("box", 2), ("box", 9),
    ]  # fmt: skip
    assert report.encoder_diff < TOLERANCE and report.encoder_scale > 0.1
    assert report.max_decoder_diff < TOLERANCE
    assert report.max_end_to_end_diff < TOLERANCE
    assert all(r.mask_sign_mismatch < 1e-3 for r in report.prompts)


def test_the_tool_exports_a_bundle_checks_it_and_replaces_an_earlier_export(
    predictor, tmp_path, onnx_package, ort, capsys
):
    tool = _load_tool()
    bundle = save_pretrained(predictor, str(tmp_path / "bundle"))
    output = tmp_path / "onnx"
    args = ["--bundle", bundle, "--output", str(output), "--check", "--prompt-counts", "2", "4"]
    assert tool.main(args) == 0
    out = capsys.readouterr().out
    assert "point   2" in out and "box   4" in out
    parity = json.loads((output / PARITY_FILE).read_text())
    assert parity["tolerance"] == 1e-3 and len(parity["prompts"]) == 4
    assert max(r["mask_logits_diff"] for r in parity["prompts"]) < TOLERANCE
    assert read_manifest(str(output))["source"] == bundle
    # A second export replaces the first one whole (parity.json of the first is gone).
    export_onnx(predictor.model, str(output), opset=18)
    assert sorted(p.name for p in output.iterdir()) == sorted(
        [ENCODER_FILE, *DECODER_FILES.values(), MANIFEST_FILE]
    )
    assert read_manifest(str(output))["exporter"]["opset"] == 18


def test_a_missing_bundle_is_a_clear_error(tmp_path, onnx_package, capsys):
    tool = _load_tool()
    output = tmp_path / "onnx"
    assert tool.main(["--bundle", str(tmp_path / "no-such-bundle"), "--output", str(output)]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "no-such-bundle" in err and "does not exist" in err
    assert not output.exists()
    # Refused before the model is loaded (the bundle need not exist for this).
    assert tool.main(["--bundle", "x", "--output", str(output), "--opset", "12"]) == 1
    assert "opset 12 is not supported: use 16-20" in capsys.readouterr().err
    missing_photo = str(tmp_path / "missing.jpg")
    assert (
        tool.main(["--bundle", "x", "--output", str(output), "--check-image", missing_photo]) == 1
    )
    assert "--check-image" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --bundle or --config-file is required
        tool.parse_args(["--output", str(output)])


def test_bad_export_arguments_are_refused_before_any_work(predictor, tmp_path, onnx_package):
    model = predictor.model
    with pytest.raises(ValueError, match="opset 13 is not supported: use 16-20"):
        export_onnx(model, str(tmp_path / "a"), opset=13)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        export_onnx(model, str(occupied))
    assert sorted(p.name for p in occupied.iterdir()) == ["notes.txt"]
    with pytest.raises(ValueError, match="takes a UniOVSeg model"):
        export_onnx(torch.nn.Linear(2, 2), str(tmp_path / "b"))
    with pytest.raises(FileNotFoundError, match="holds no uniovseg_onnx.json"):
        read_manifest(str(occupied))


def test_a_check_against_another_models_export_is_refused(predictor, export_dir, tmp_path, ort):
    other = tmp_path / "other"
    shutil.copytree(export_dir, other)
    manifest = json.loads((other / MANIFEST_FILE).read_text())
    manifest["input_size"] = 256
    (other / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="exported from another model"):
        check_onnx_parity(predictor.model, str(other))
    with pytest.raises(ValueError, match="prompt counts must be >= 1"):
        check_onnx_parity(predictor.model, str(export_dir), prompt_counts=(0,))


def test_missing_packages_are_named(predictor, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` fail
    with pytest.raises(ModuleNotFoundError, match="pip install onnx"):
        export_onnx(predictor.model, str(tmp_path / "x"))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ModuleNotFoundError, match="pip install onnxruntime"):
        check_onnx_parity(predictor.model, str(tmp_path / "x"))
