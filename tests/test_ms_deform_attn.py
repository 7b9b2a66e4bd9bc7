"""Tests of the multi-scale deformable-attention op (every path) and of MSDeformAttn."""

from __future__ import annotations

import importlib.util
import math
import warnings

import pytest
import torch

from uniovseg.layers import ms_deform_attn_function as op
from uniovseg.layers.ms_deform_attn import MSDeformAttn, compiled_backends, ms_deform_attn

CPU_BACKENDS = ["pytorch"] + (["cpp"] if "cpp" in compiled_backends() else [])
requires_cpp = pytest.mark.skipif(
    "cpp" not in compiled_backends(), reason="uniovseg._C is not built (PyTorch path only)"
)
HAS_ORACLE = importlib.util.find_spec("torch_ms_deform_attn") is not None


def level_table(shapes: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    spatial_shapes = torch.tensor(shapes, dtype=torch.long)
    areas = spatial_shapes[:, 0] * spatial_shapes[:, 1]
    return spatial_shapes, torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])


def make_inputs(
    *,
    shapes: list[tuple[int, int]],
    batch: int = 1,
    heads: int = 2,
    dim: int = 4,
    queries: int = 5,
    points: int = 2,
    low: float = -0.1,
    high: float = 1.1,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random inputs; locations uniform in [low, high] so some fall near or beyond the border."""
    generator = torch.Generator().manual_seed(seed)
    spatial_shapes, level_start_index = level_table(shapes)
    num_keys = int((spatial_shapes[:, 0] * spatial_shapes[:, 1]).sum())
    size = (batch, queries, heads, len(shapes), points)
    locations = low + (high - low) * torch.rand(*size, 2, generator=generator, dtype=dtype)
    return {
        "value": torch.randn(batch, num_keys, heads, dim, generator=generator, dtype=dtype),
        "spatial_shapes": spatial_shapes,
        "level_start_index": level_start_index,
        "sampling_locations": locations,
        "attention_weights": torch.rand(*size, generator=generator, dtype=dtype),
    }


def run_with_grads(inputs: dict[str, torch.Tensor], backend: str, seed: int = 1):
    """Output and gradients w.r.t. value, locations and weights for a fixed output gradient."""
    leaves = {
        k: inputs[k].detach().clone().requires_grad_()
        for k in ("value", "sampling_locations", "attention_weights")
    }
    out = ms_deform_attn(
        leaves["value"],
        inputs["spatial_shapes"],
        inputs["level_start_index"],
        leaves["sampling_locations"],
        leaves["attention_weights"],
        backend=backend,
    )
    generator = torch.Generator().manual_seed(seed)
    grad = torch.randn(out.shape, generator=generator, dtype=torch.float64).to(out)
    grads = torch.autograd.grad(out, list(leaves.values()), grad)
    return (out, *grads)


ODD_CASES = {
    "one_level": dict(shapes=[(5, 7)]),
    "non_square_levels": dict(shapes=[(6, 3), (2, 9), (1, 1)], points=3),
    "inside_only": dict(shapes=[(4, 4), (2, 2)], low=0.0, high=1.0),
    "far_outside": dict(shapes=[(4, 5), (3, 2)], low=-1.5, high=2.5),
    "batch_3": dict(shapes=[(3, 4), (2, 2)], batch=3, queries=4),
    "heads3_dim5": dict(shapes=[(4, 3), (2, 5)], heads=3, dim=5),
    "heads1_dim40": dict(shapes=[(3, 3), (2, 2)], heads=1, dim=40),  # > 32 channels, tail loop
    "heads8_dim32": dict(shapes=[(4, 4), (2, 2)], heads=8, dim=32, queries=3),
}


# --- the op: known answers -------------------------------------------------------------------


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_known_answers_on_2x2_map(backend):
    # One level, 2x2 map, one head with channels (pixel value, 10 * pixel value).
    pixels = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64).reshape(4)
    value = torch.stack([pixels, 10 * pixels], -1).view(1, 4, 1, 2)
    spatial_shapes, level_start_index = level_table([(2, 2)])
    points = torch.tensor(
        [
            [0.25, 0.25],  # centre of pixel (0, 0)
            [0.75, 0.75],  # centre of pixel (1, 1)
            [0.50, 0.50],  # middle of the map: mean of the four pixels
            [0.00, 0.25],  # left border on row 0: half of pixel (0, 0), half zero padding
            [0.50, 0.25],  # between pixels (0, 0) and (0, 1)
            [1.50, 0.50],  # outside: zero
        ],
        dtype=torch.float64,
    )
    expected = torch.tensor([1.0, 4.0, 2.5, 0.5, 1.5, 0.0], dtype=torch.float64)
    locations = points.view(1, 6, 1, 1, 1, 2)
    weights = torch.full((1, 6, 1, 1, 1), 2.0, dtype=torch.float64)
    out = ms_deform_attn(
        value, spatial_shapes, level_start_index, locations, weights, backend=backend
    )
    assert out.shape == (1, 6, 2)
    torch.testing.assert_close(out[0, :, 0], 2 * expected)
    torch.testing.assert_close(out[0, :, 1], 20 * expected)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_weights_are_linear_and_levels_add(backend):
    inputs = make_inputs(shapes=[(3, 4), (2, 2)], points=1)
    out = ms_deform_attn(**inputs, backend=backend)
    only_level_0 = dict(inputs, attention_weights=inputs["attention_weights"].clone())
    only_level_0["attention_weights"][:, :, :, 1] = 0
    only_level_1 = dict(inputs, attention_weights=inputs["attention_weights"].clone())
    only_level_1["attention_weights"][:, :, :, 0] = 0
    total = ms_deform_attn(**only_level_0, backend=backend) + ms_deform_attn(
        **only_level_1, backend=backend
    )
    torch.testing.assert_close(out, total)


# --- compiled paths against the PyTorch path ---------------------------------------------------


@requires_cpp
@pytest.mark.parametrize("case", list(ODD_CASES), ids=list(ODD_CASES))
def test_cpp_matches_pytorch_float64(case):
    inputs = make_inputs(**ODD_CASES[case])
    reference = run_with_grads(inputs, "pytorch")
    result = run_with_grads(inputs, "cpp")
    for name, ref, got in zip(
        ["out", "value", "locations", "weights"], reference, result, strict=True
    ):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10, msg=name)


def exact_grid_inputs() -> dict[str, torch.Tensor]:
    """On a 4x4 map, u = k / 8 lands on pixel centres, pixel edges, x = -1 (only the zero-weight
    right neighbour inside) and x = W (nothing inside): floor() conventions must agree there."""
    inputs = make_inputs(shapes=[(4, 4)], heads=1, dim=3, queries=12 * 12, points=1)
    grid = torch.arange(-2, 10, dtype=torch.float64) / 8  # -0.25 ... 1.125
    ys, xs = torch.meshgrid(grid, grid, indexing="ij")
    inputs["sampling_locations"] = torch.stack([xs, ys], -1).reshape(1, -1, 1, 1, 1, 2)
    return inputs


@requires_cpp
def test_cpp_matches_pytorch_on_exact_grid_and_border_points():
    inputs = exact_grid_inputs()
    reference = run_with_grads(inputs, "pytorch")
    result = run_with_grads(inputs, "cpp")
    for ref, got in zip(reference, result, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


@requires_cpp
@pytest.mark.parametrize("threads", [3, 4])
def test_cpp_backward_with_query_chunks(threads):
    # Fewer (batch, head) pairs than threads: the value gradient is accumulated in per-chunk
    # buffers and summed, which must equal the single-pass result.
    inputs = make_inputs(shapes=[(4, 5), (2, 3)], batch=1, heads=2, queries=37, dim=6)
    reference = run_with_grads(inputs, "pytorch")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        result = run_with_grads(inputs, "cpp")
    finally:
        torch.set_num_threads(before)
    for ref, got in zip(reference, result, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


@requires_cpp
def test_cpp_float32_and_low_precision():
    inputs64 = make_inputs(shapes=[(6, 5), (3, 3)], heads=4, dim=8, queries=20)
    reference = run_with_grads(inputs64, "pytorch")
    inputs32 = {k: v.float() if v.is_floating_point() else v for k, v in inputs64.items()}
    for ref, got in zip(reference, run_with_grads(inputs32, "cpp"), strict=True):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-5)
    for dtype in (torch.float16, torch.bfloat16):
        low = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs64.items()}
        out = ms_deform_attn(**low, backend="cpp")
        assert out.dtype == dtype
        # Computed in float32 from the rounded inputs: only the final rounding differs.
        exact = ms_deform_attn(
            **{k: v.double() if v.is_floating_point() else v for k, v in low.items()},
            backend="pytorch",
        )
        torch.testing.assert_close(out, exact.to(dtype))
        grads = torch.autograd.grad(
            ms_deform_attn(
                low["value"].requires_grad_(),
                low["spatial_shapes"],
                low["level_start_index"],
                low["sampling_locations"].requires_grad_(),
                low["attention_weights"].requires_grad_(),
                backend="cpp",
            ).sum(),
            [low["value"], low["sampling_locations"], low["attention_weights"]],
        )
        assert all(g.dtype == dtype and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradcheck(backend):
    inputs = make_inputs(shapes=[(3, 4), (2, 1)], batch=2, heads=2, dim=3, queries=3, points=2)

    def fn(value, locations, weights):
        return ms_deform_attn(
            value,
            inputs["spatial_shapes"],
            inputs["level_start_index"],
            locations,
            weights,
            backend=backend,
        )

    leaves = [
        inputs[k].clone().requires_grad_()
        for k in ("value", "sampling_locations", "attention_weights")
    ]
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6)


@pytest.mark.skipif(not HAS_ORACLE, reason="torch-ms-deform-attn (test oracle) not installed")
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", ["non_square_levels", "far_outside", "heads3_dim5"])
def test_against_torch_ms_deform_attn(backend, case):
    import torch_ms_deform_attn

    inputs = make_inputs(**ODD_CASES[case])
    leaves = {
        k: inputs[k].clone().requires_grad_()
        for k in ("value", "sampling_locations", "attention_weights")
    }
    oracle_out = torch_ms_deform_attn.ms_deform_attn(
        leaves["value"],
        inputs["spatial_shapes"],
        inputs["level_start_index"],
        leaves["sampling_locations"],
        leaves["attention_weights"],
    )
    generator = torch.Generator().manual_seed(1)
    grad = torch.randn(oracle_out.shape, generator=generator, dtype=torch.float64)
    oracle = (oracle_out, *torch.autograd.grad(oracle_out, list(leaves.values()), grad))
    for ref, got in zip(oracle, run_with_grads(inputs, backend, seed=1), strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)


# --- backend selection and validation ----------------------------------------------------------


def test_unknown_backend_raises():
    inputs = make_inputs(shapes=[(2, 2)])
    with pytest.raises(ValueError, match="Unknown ms_deform_attn backend"):
        ms_deform_attn(**inputs, backend="triton")


def test_auto_without_compiled_op_warns_once_and_uses_pytorch(monkeypatch):
    monkeypatch.setattr(op, "compiled_backends", set)
    monkeypatch.setattr(op, "_fallback_warned", False)
    inputs = make_inputs(shapes=[(3, 3)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = ms_deform_attn(**inputs, backend="auto")
        ms_deform_attn(**inputs, backend="auto")
    messages = [str(w.message) for w in caught if "not compiled" in str(w.message)]
    assert len(messages) == 1 and "pip install --no-build-isolation -e ." in messages[0]
    torch.testing.assert_close(out, ms_deform_attn(**inputs, backend="pytorch"))
    with pytest.raises(ValueError, match="not compiled"):
        ms_deform_attn(**inputs, backend="cpp")
    with pytest.raises(ValueError, match="FORCE_CUDA=1"):
        ms_deform_attn(**inputs, backend="cuda")


def test_backend_must_match_device(monkeypatch):
    monkeypatch.setattr(op, "compiled_backends", lambda: {"cpp", "cuda"})
    with pytest.raises(ValueError, match="cannot run on cpu tensors"):
        op.resolve_backend("cuda", torch.device("cpu"))
    assert op.resolve_backend("auto", torch.device("cpu")) == "cpp"
    assert op.resolve_backend("auto", torch.device("cuda")) == "cuda"
    monkeypatch.setattr(op, "compiled_backends", lambda: {"cpp"})
    monkeypatch.setattr(op, "_fallback_warned", True)  # silence: tested above
    assert op.resolve_backend("auto", torch.device("cuda")) == "pytorch"


@requires_cpp
def test_auto_picks_cpp_without_warning():
    inputs = make_inputs(shapes=[(3, 3)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = ms_deform_attn(**inputs, backend="auto")
    torch.testing.assert_close(out, ms_deform_attn(**inputs, backend="cpp"))
    assert op.resolve_backend("auto", torch.device("cpu")) == "cpp"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(spatial_shapes=torch.tensor([[3, 3], [1, 2]])), "sum to"),
        (lambda d: d.update(level_start_index=torch.tensor([0, 10])), "exclusive cumulative"),
        (lambda d: d.update(attention_weights=d["attention_weights"][..., :1]), "must have shape"),
        (lambda d: d.update(value=d["value"][0]), "value must be"),
    ],
)
def test_invalid_inputs_raise(change, message):
    inputs = make_inputs(shapes=[(3, 3), (2, 2)])
    change(inputs)
    with pytest.raises(ValueError, match=message):
        ms_deform_attn(**inputs, backend="pytorch")


# --- the module ---------------------------------------------------------------------------------


def test_module_parameters_match_checkpoint_layout():
    module = MSDeformAttn(embed_dim=256, num_levels=3, num_heads=8, num_points=4)
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert shapes == {
        "sampling_offsets.weight": (192, 256),
        "sampling_offsets.bias": (192,),
        "attention_weights.weight": (96, 256),
        "attention_weights.bias": (96,),
        "value_proj.weight": (256, 256),
        "value_proj.bias": (256,),
        "output_proj.weight": (256, 256),
        "output_proj.bias": (256,),
    }


def test_module_initialisation():
    module = MSDeformAttn(embed_dim=16, num_levels=2, num_heads=4, num_points=3)
    assert torch.count_nonzero(module.sampling_offsets.weight) == 0
    assert torch.count_nonzero(module.attention_weights.weight) == 0
    assert torch.count_nonzero(module.attention_weights.bias) == 0
    assert torch.count_nonzero(module.value_proj.bias) == 0
    assert torch.count_nonzero(module.output_proj.bias) == 0
    bias = module.sampling_offsets.bias.view(4, 2, 3, 2)  # heads, levels, points, (x, y)
    # 4 heads: directions right, down, left, up; point p at distance p + 1; same on each level.
    directions = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    distance = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1)
    for level in range(2):
        torch.testing.assert_close(
            bias[:, level], directions[:, None] * distance, atol=1e-6, rtol=0
        )
    bound = math.sqrt(6 / (16 + 16))  # xavier-uniform
    assert module.value_proj.weight.abs().max() <= bound


def _module_inputs(batch=2, channels=16, shapes=((4, 6), (2, 3)), seed=0):
    generator = torch.Generator().manual_seed(seed)
    spatial_shapes, level_start_index = level_table(list(shapes))
    num_keys = int((spatial_shapes[:, 0] * spatial_shapes[:, 1]).sum())
    feats = torch.randn(batch, num_keys, channels, generator=generator)
    ref = torch.rand(batch, num_keys, len(shapes), 2, generator=generator)
    return feats, ref, spatial_shapes, level_start_index


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_module_output_shape_and_gradients(backend):
    module = MSDeformAttn(embed_dim=16, num_levels=2, num_heads=4, num_points=2, backend=backend)
    with torch.no_grad():  # non-trivial offsets/weights so every parameter gets a gradient
        module.sampling_offsets.weight.normal_(std=0.1)
        module.attention_weights.weight.normal_(std=0.1)
    feats, ref, shapes, starts = _module_inputs()
    out = module(feats[:, :7], ref[:, :7], feats, shapes, starts)
    assert out.shape == (2, 7, 16)
    out.square().sum().backward()
    for name, param in module.named_parameters():
        assert param.grad is not None and torch.count_nonzero(param.grad) > 0, name
    boxes = torch.cat([ref, torch.full_like(ref, 0.3)], -1)
    assert module(feats, boxes, feats, shapes, starts).shape == feats.shape


@requires_cpp
def test_module_cpp_matches_pytorch():
    torch.manual_seed(0)
    module = MSDeformAttn(embed_dim=16, num_levels=2, num_heads=4, num_points=2).double()
    feats, ref, shapes, starts = _module_inputs()
    feats, ref = feats.double(), ref.double()
    module.backend = "pytorch"
    expected = module(feats, ref, feats, shapes, starts)
    module.backend = "cpp"
    torch.testing.assert_close(module(feats, ref, feats, shapes, starts), expected)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_module_padding_mask_removes_contributions(backend):
    module = MSDeformAttn(embed_dim=16, num_levels=2, num_heads=4, num_points=2, backend=backend)
    feats, ref, shapes, starts = _module_inputs()
    mask = torch.zeros(feats.shape[:2], dtype=torch.bool)
    mask[0, 3:11] = True
    mask[1, 20:] = True
    query = torch.randn(2, 5, 16)
    out = module(query, ref[:, :5], feats, shapes, starts, value_padding_mask=mask)
    changed = feats.masked_fill(mask[..., None], 1e3)  # padded values must not matter
    torch.testing.assert_close(
        module(query, ref[:, :5], changed, shapes, starts, value_padding_mask=mask), out
    )
    everything = torch.ones_like(mask)
    only_bias = module(query, ref[:, :5], feats, shapes, starts, value_padding_mask=everything)
    torch.testing.assert_close(only_bias, module.output_proj.bias.expand_as(only_bias))


def test_module_rejects_bad_configuration_and_inputs():
    with pytest.raises(ValueError, match="divisible"):
        MSDeformAttn(embed_dim=10, num_heads=4)
    with pytest.raises(ValueError, match="Unknown backend"):
        MSDeformAttn(embed_dim=8, num_heads=2, backend="fast")
    module = MSDeformAttn(embed_dim=16, num_levels=2, num_heads=4, num_points=2)
    feats, ref, shapes, starts = _module_inputs()
    with pytest.raises(ValueError, match="reference_points"):
        module(feats, ref[:, :, :1], feats, shapes, starts)
    with pytest.raises(ValueError, match="spatial_shapes"):
        module(feats, ref, feats, shapes[:1], starts[:1])


# --- CUDA (skipped without a GPU and a CUDA build) ---------------------------------------------


def _cuda_or_skip() -> torch.device:
    if "cuda" not in compiled_backends():
        pytest.skip("uniovseg._C was built without CUDA")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch.device("cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("case", [*ODD_CASES, "exact_grid"])
def test_cuda_matches_pytorch_float64(case):
    device = _cuda_or_skip()
    inputs = exact_grid_inputs() if case == "exact_grid" else make_inputs(**ODD_CASES[case])
    inputs = {k: v.to(device) for k, v in inputs.items()}
    reference = run_with_grads(inputs, "pytorch")
    result = run_with_grads(inputs, "cuda")
    for ref, got in zip(reference, result, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.cuda
def test_cuda_gradcheck_and_low_precision():
    device = _cuda_or_skip()
    inputs = {k: v.to(device) for k, v in make_inputs(shapes=[(3, 4), (2, 1)], batch=2).items()}

    def fn(value, locations, weights):
        return ms_deform_attn(
            value,
            inputs["spatial_shapes"],
            inputs["level_start_index"],
            locations,
            weights,
            backend="cuda",
        )

    leaves = [
        inputs[k].clone().requires_grad_()
        for k in ("value", "sampling_locations", "attention_weights")
    ]
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        low = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
        exact = ms_deform_attn(
            **{k: v.double() if v.is_floating_point() else v for k, v in low.items()},
            backend="pytorch",
        )
        out = ms_deform_attn(**low, backend="cuda")
        assert out.dtype == dtype
        torch.testing.assert_close(out, exact.to(dtype), rtol=1e-5, atol=1e-5)
