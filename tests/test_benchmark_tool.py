"""The benchmark suite (tools/benchmark.py, tools/benchmark_suite/): statistics and timers on
hand-made cases, synthetic inputs, and the report's structure from a tiny run. Never timing
assertions: those belong to the benchmark's output."""

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

# The suite lives beside its tool, outside the installed library.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from benchmark_suite import (  # noqa: E402
    PATH_STAGES,
    STAGE_LABELS,
    PeakMemoryMeter,
    StageFlopCounter,
    StageTimer,
    SuiteSettings,
    SyntheticMaskLogits,
    estimate_seconds,
    plan_items,
    sa1b_training_example,
    summarize,
)
from benchmark_suite import timing as timing_module  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY_STAGE1 = str(ROOT / "configs" / "tiny" / "stage1_tiny.yaml")
TINY_STAGE2 = str(ROOT / "configs" / "tiny" / "stage2_tiny.yaml")


def _load_cli():
    spec = importlib.util.spec_from_file_location("benchmark_cli", ROOT / "tools" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summarize_gives_median_quartiles_and_extremes_in_ms():
    s = summarize([0.004, 0.001, 0.003, 0.002])
    assert s["median_ms"] == pytest.approx(2.5)
    assert (s["min_ms"], s["max_ms"]) == pytest.approx((1.0, 4.0))
    # inclusive quartiles of 1, 2, 3, 4: 1.75 and 3.25
    assert (s["q1_ms"], s["q3_ms"], s["iqr_ms"]) == pytest.approx((1.75, 3.25, 1.5))
    assert s["runs"] == 4 and s["runs_ms"] == pytest.approx([1.0, 2.0, 3.0, 4.0])
    single = summarize([0.01])
    assert single["iqr_ms"] == 0.0 and single["median_ms"] == pytest.approx(10.0)
    with pytest.raises(ValueError, match="repeat"):
        summarize([])


def test_stage_timer_charges_nested_stages_to_themselves_and_accumulates(monkeypatch):
    clock = iter([0.0, 1.0, 3.0, 4.0, 10.0, 10.5, 20.0, 21.0, 23.0])
    monkeypatch.setattr(timing_module.time, "perf_counter", lambda: next(clock))
    timer = StageTimer("cpu")
    with timer.stage("post"):  # 0 .. 4, of which 1 .. 3 in "decoder"
        with timer.stage("decoder"):
            pass
    with timer.stage("decoder"):  # 10 .. 10.5: accumulates
        pass
    assert timer.end_run() == pytest.approx({"post": 2.0, "decoder": 2.5})
    with timer.stage("post"):  # 20 .. 21
        pass
    timer.end_run()
    summaries = timer.summaries()
    assert summaries["post"]["runs_ms"] == pytest.approx([1000.0, 2000.0])
    # a stage absent from a run counts as 0 there
    assert summaries["decoder"]["runs_ms"] == pytest.approx([0.0, 2500.0])
    with pytest.raises(RuntimeError):
        with timer.stage("open"):
            timer.end_run()


class _ScriptedMeter:
    """A meter whose usage the test sets: ``peak_bytes`` is the highest value set since the
    last ``reset``."""

    def __init__(self):
        self.usage = self.peak = 0

    def set(self, usage):
        self.usage = usage
        self.peak = max(self.peak, usage)

    def reset(self):
        self.peak = self.usage

    def peak_bytes(self):
        return self.peak


def test_stage_timer_peak_memory_includes_nested_stages_and_resets_between_stages():
    meter = _ScriptedMeter()
    timer = StageTimer("cpu", meter=meter)
    meter.set(10)
    with timer.stage("outer"):
        meter.set(100)
        with timer.stage("inner"):
            meter.set(300)
            meter.set(20)
        meter.set(50)
    with timer.stage("later"):  # starts at usage 50, the earlier 300 is not its peak
        meter.set(70)
    timer.end_run()
    assert timer.peak_memory() == {"outer": 300, "inner": 300, "later": 70}


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_flop_counter_charges_nested_stages_to_themselves():
    counter = StageFlopCounter()
    a, b = torch.ones(8, 16), torch.ones(16, 4)
    query, key = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 7, 8)
    mask = torch.rand(1, 1, 5, 7) > 0.3
    with counter:
        with counter.stage("outer"):
            a @ b  # 2 x 8 x 16 x 4
            with counter.stage("inner"):
                a @ b
                a @ b
            torch.nn.functional.scaled_dot_product_attention(query, key, key, attn_mask=mask)
        with counter.stage("nms"):
            torch._int_mm(torch.ones(17, 24, dtype=torch.int8), torch.ones(24, 8, dtype=torch.int8))
    matmul = 2 * 8 * 16 * 4
    attention = 4 * 1 * 2 * 5 * 7 * 8  # QK^T and AV, whatever the mask
    assert counter.flops == {
        "outer": matmul + attention,
        "inner": 2 * matmul,
        "nms": 2 * 17 * 24 * 8,
    }


def test_cpu_peak_memory_sees_a_touched_allocation():
    meter = PeakMemoryMeter("cpu")
    meter.reset()
    before = meter.current_bytes()
    block = np.ones(64 * 1024**2 // 8)  # 64 MiB, written so it is resident
    peak = meter.peak_bytes()
    del block
    assert peak >= before + 60 * 1024**2
    assert meter.kind.startswith("process_")


def test_synthetic_mask_logits_are_blobs_around_the_prompts_and_pass_the_iou_filter():
    synthetic = SyntheticMaskLogits(radii=(0.05, 0.2))
    points = torch.tensor([[[64.0, 64.0], [200.0, 40.0]]])  # input pixels of a 256 frame
    masks, ious = synthetic(points, num_outputs=2, lowres_size=(64, 64), input_size=(256, 256))
    assert masks.shape == (1, 2, 2, 64, 64) and ious.shape == (1, 2, 2)
    assert torch.sigmoid(ious).min() >= 0.619  # the release's predicted-IoU threshold
    assert masks[0, 0, :, 16, 16].min() > 0  # the prompt (64, 64) -> low-res (16, 16) is inside
    assert masks[0, 0, :, 63, 63].max() < 0  # a far corner is outside
    area = (masks[0, 0] > 0).flatten(1).sum(1)
    assert area[0] < area[1]  # coarser granularity, bigger mask
    again, _ = synthetic(points, num_outputs=2, lowres_size=(64, 64), input_size=(256, 256))
    assert torch.equal(masks, again)  # deterministic


def test_synthetic_engine_replaces_point_outputs_and_is_restored():
    from benchmark_suite.inputs import SyntheticLogitsEngine, use_synthetic_masks
    from uniovseg.modeling.automatic_mask_engine import AutomaticMaskGenerationEngine
    from uniovseg.modeling.image_frame import ImageFrame

    engine = AutomaticMaskGenerationEngine(points_per_side=1, stability_score_thresh=0.0)
    seen = []

    def predict(points):  # the real decoder: called, its masks empty
        seen.append(points)
        return torch.zeros(1, points.shape[1], 4, 8, 8), torch.zeros(1, points.shape[1], 4)

    class FakeModel:
        mask_generator, alignment_mask_generator = engine, None

    model = FakeModel()
    with use_synthetic_masks(model, SyntheticMaskLogits()):
        synthetic = model.mask_generator
        assert isinstance(synthetic, SyntheticLogitsEngine)
        assert synthetic.points_per_side == 1  # the engine's settings
        result = synthetic.generate(predict, ImageFrame((32, 32), (32, 32), (32, 32)))
    assert len(seen) == 1 and len(result) > 0  # real decoder ran, synthetic masks kept
    assert (
        engine.generate(predict, ImageFrame((32, 32), (32, 32), (32, 32))).masks.shape[0] == 0
    )  # the empty real outputs give nothing
    assert model.mask_generator is engine and model.alignment_mask_generator is None  # restored


def test_sa1b_example_has_tight_boxes_and_the_point_grid():
    example = sa1b_training_example(64, num_masks=5, point_grid_size=3, seed=1)
    masks, boxes = example["gt_masks"], example["box_prompts"]
    assert masks.shape == (5, 64, 64) and masks.flatten(1).any(1).all()
    assert example["point_coords"].shape == (9, 2)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes.long().tolist(), strict=True):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_plan_applies_variants_skip_and_only():
    settings = SuiteSettings(
        inference_config=TINY_STAGE2,
        train_configs={"stage1_tiny": TINY_STAGE1, "stage2_tiny": TINY_STAGE2},
        dtypes=["fp32", "bf16"],
        compile_modes=[False, True],
    )
    names = [item.name for item in plan_items(settings)]
    assert names[:4] == [
        "inference[fp32]",
        "inference[fp32,compile]",
        "inference[bf16]",
        "inference[bf16,compile]",
    ]
    assert "text_classifier_ade20k_847" in names and "train_stage2_tiny[bf16]" in names
    settings.skip = ["text_classifier_*", "train_stage2*"]
    settings.only = ["inference[fp32]", "train_*", "text_*"]
    assert [item.name for item in plan_items(settings)] == [
        "inference[fp32]",
        "train_stage1_tiny[fp32]",
        "train_stage1_tiny[bf16]",
    ]
    assert all(estimate_seconds(i, settings) > 0 for i in plan_items(settings))
    settings.device = "cuda"
    assert estimate_seconds(plan_items(settings)[0], settings) is None  # no GPU reference


def test_tiny_run_writes_json_and_markdown_with_every_section(tmp_path, capsys):
    cli = _load_cli()
    output = tmp_path / "bench.json"
    code = cli.main(
        [
            "--tiny",
            "--no-isolate",
            "--repeat", "1",
            "--warmup", "0",
            "--images", str(tmp_path / "no-photos-here"),  # -> synthetic image
            "--num-images", "1",
            "--image-size", "96",
            "--text-vocabularies", "ade20k_150",
            "--text-sample-prompts", "28",
            "--train-repeat", "1",
            "--skip", "train_stage2*",
            "--output", str(output),
            "MODEL.UNIOVSEG.AUTOMATIC.POINTS_PER_SIDE", "6",  # config overrides go last
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads(output.read_text())
    assert {"environment", "settings", "items", "targets"} <= set(report)
    assert report["environment"]["torch"] == torch.__version__
    assert report["environment"]["torch_threads"] == 2
    assert set(report["environment"]["ms_deform_attn_kernels"]) <= {"cpp", "cuda"}
    items = report["items"]
    assert set(items) == {
        "inference[fp32]",
        "text_classifier_ade20k_150",
        "train_stage1_tiny[fp32]",
    }
    inference = items["inference[fp32]"]
    stages = set(STAGE_LABELS)  # with a vocabulary every stage runs
    assert set(inference["stages"]) == stages
    assert set(inference["end_to_end"]) == {"automatic", "semantic", "panoptic"}
    for summary in [*inference["stages"].values(), *inference["end_to_end"].values()]:
        assert summary["runs"] == 1 and summary["min_ms"] <= summary["median_ms"]
    assert inference["point_grid"] == "6x6"
    assert inference["images"][0]["name"].startswith("synthetic")
    assert max(inference["images"][0]["size"]) == 96
    (ks,) = inference["num_masks"].values()
    assert ks[0] > 0  # synthetic masks survive the filters with random weights
    assert all(v > 0 for v in inference["peak_memory_bytes"].values())
    assert inference["semantic_over_backbone"] > 0
    flops = inference["stage_flops"]
    for stage in ("backbone", "pixel_decoder", "mask_decoder", "region_embedding"):
        assert flops[stage] > 0, stage
    assert "preprocess" not in flops or flops["preprocess"] == 0  # resizing is element-wise
    target = report["targets"]["inference[fp32]"]
    # The floor counts the same operations as the stages: at least the backbone's own.
    expected_floor = sum(flops.get(s, 0.0) for s in PATH_STAGES["semantic"]) / flops["backbone"]
    assert target["semantic_compute_floor"] == pytest.approx(expected_floor)
    assert target["semantic_compute_floor"] > 1.0
    text = items["text_classifier_ade20k_150"]
    assert text["extrapolated"] and text["prompts"] == 14 * text["synonyms"]
    assert text["timed_prompts"] >= 28
    train = items["train_stage1_tiny[fp32]"]
    assert train["example"] == "sa1b" and train["loss_terms"] > 0
    assert np.isfinite(train["loss"])

    markdown = output.with_suffix(".md").read_text()
    for heading in ["| stage |", "| end to end |", "| vocabulary |", "| item | config |"]:
        assert heading in markdown
    assert STAGE_LABELS["panoptic_assembly"] in markdown
    assert "| GFLOP | GFLOP/s |" in markdown
    assert markdown in capsys.readouterr().out  # printed at the end


def test_isolated_worker_runs_an_item_in_a_fresh_process(tmp_path):
    cli = _load_cli()
    output = tmp_path / "bench.json"
    code = cli.main(
        [
            "--tiny",
            "--only", "text_classifier_ade20k_150",
            "--warmup", "0",
            "--text-sample-prompts", "14",
            "--output", str(output),
        ]
    )  # fmt: skip
    assert code == 0
    (result,) = json.loads(output.read_text())["items"].values()
    assert "error" not in result and result["peak_memory_bytes"] > 0
    assert result["clip_model"] == "uniovseg_tiny_convnext"


def test_list_prints_items_with_estimates(capsys):
    cli = _load_cli()
    assert cli.main(["--tiny", "--list", "--skip", "text_*,nothing"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == [
        "inference[fp32]",
        "train_stage1_tiny[fp32]",
        "train_stage2_tiny[fp32]",
    ]
    assert all("min" in line for line in lines)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux only")
def test_worker_exits_when_the_suite_process_dies(tmp_path):
    """A killed suite must not leave its worker running (an orphan skews every later run)."""
    pid_file = tmp_path / "worker.pid"
    worker = (
        "import os, sys, time; sys.path.insert(0, sys.argv[2]);"
        "from benchmark_suite.suite import _exit_with_parent; _exit_with_parent();"
        "open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(120)"
    )
    parent = (
        "import subprocess, sys, time;"
        f"subprocess.Popen([sys.executable, '-c', {worker!r}, sys.argv[1], sys.argv[2]]);"
        "time.sleep(120)"
    )
    tools_dir = str(Path(__file__).resolve().parents[1] / "tools")
    suite = subprocess.Popen([sys.executable, "-c", parent, str(pid_file), tools_dir])
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline, "the worker never started"
            time.sleep(0.1)
        worker_pid = int(pid_file.read_text())
    finally:
        suite.kill()
        suite.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{worker_pid}").exists() and "Z" not in _proc_state(worker_pid):
        assert time.monotonic() < deadline, "the worker outlived the suite process"
        time.sleep(0.1)


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (OSError, IndexError):
        return "gone"
