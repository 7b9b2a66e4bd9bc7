"""The multi-scale deformable-attention op and the choice of its implementation.

Three implementations compute the same function (Deformable DETR, Zhu et al. 2021, Eq. 3):

- ``"pytorch"``: ``F.grid_sample`` per level, always available, the reference.
- ``"cpp"``: the hand-written CPU kernel of the compiled extension ``uniovseg._C``.
- ``"cuda"``: the CUDA kernel of the same extension, when it was built with CUDA.

The backend is chosen explicitly from what the extension was built with, never by catching a
failure at run time. Build the extension with ``pip install --no-build-isolation -e .`` (add
``FORCE_CUDA=1`` to compile the CUDA kernel on a machine without a GPU).
"""

from __future__ import annotations

import importlib
import logging
import warnings
from types import ModuleType

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "pytorch", "cpp", "cuda")

_BUILD_HINT = (
    "Build it from the repository root with `pip install --no-build-isolation -e .` "
    "(or `python setup.py build_ext --inplace`); set FORCE_CUDA=1 to compile the CUDA kernel "
    "on a machine without a GPU."
)

_extension: ModuleType | None = None
_extension_loaded = False
_extension_error = ""  # why a built extension failed to load (e.g. built against another torch)
_fallback_warned = False


def _load_extension() -> ModuleType | None:
    """Imports ``uniovseg._C`` once; returns None when it was not built or cannot load."""
    global _extension, _extension_loaded, _extension_error
    if not _extension_loaded:
        _extension_loaded = True
        try:
            # torch is imported above: the extension links against libc10/libtorch.
            _extension = importlib.import_module("uniovseg._C")
        except ModuleNotFoundError as err:
            logger.debug("uniovseg._C was not built: %s", err)
        except ImportError as err:  # built, but unloadable (undefined symbol, missing library)
            _extension_error = f" Loading the built uniovseg._C failed: {err}; rebuild it."
            logger.warning("uniovseg._C could not be loaded: %s", err)
    return _extension


def compiled_backends() -> set[str]:
    """Names of the compiled implementations available in this installation.

    Returns:
        A subset of ``{"cpp", "cuda"}``: ``"cpp"`` when the extension ``uniovseg._C`` was built,
        plus ``"cuda"`` when it was built with the CUDA kernel. Empty when only the PyTorch path
        exists. Whether a GPU is present is not considered.
    """
    ext = _load_extension()
    if ext is None:
        return set()
    backends = {"cpp"}
    if ext.compiled_with_cuda():
        backends.add("cuda")
    return backends


def resolve_backend(backend: str, device: torch.device) -> str:
    """Maps a requested backend to the implementation that will run on ``device``.

    Args:
        backend: One of ``"auto"``, ``"pytorch"``, ``"cpp"``, ``"cuda"``.
        device: Device of the op's inputs.

    Returns:
        ``"pytorch"``, ``"cpp"`` or ``"cuda"``. ``"auto"`` picks the compiled kernel for the
        device when it was built, else ``"pytorch"`` (with one warning per process).

    Raises:
        ValueError: For an unknown name, a compiled backend that was not built, or a backend that
            does not match the device of the inputs.
    """
    global _fallback_warned
    if backend not in BACKENDS:
        raise ValueError(f"Unknown ms_deform_attn backend {backend!r}; choose one of {BACKENDS}.")
    if backend == "pytorch":
        return backend
    available = compiled_backends()
    kernel_for_device = {"cpu": "cpp", "cuda": "cuda"}.get(device.type)
    if backend == "auto":
        if kernel_for_device is not None and kernel_for_device in available:
            return kernel_for_device
        if not _fallback_warned:
            _fallback_warned = True
            warnings.warn(
                f"The multi-scale deformable-attention op is not compiled for {device.type} "
                f"tensors (compiled backends: {sorted(available) or 'none'}); using the slower "
                f"PyTorch path.{_extension_error} {_BUILD_HINT}",
                stacklevel=3,
            )
        return "pytorch"
    if backend not in available:
        raise ValueError(
            f"ms_deform_attn backend {backend!r} was requested but not compiled (compiled "
            f"backends: {sorted(available) or 'none'}). {_BUILD_HINT} Or pass backend='pytorch'."
        )
    if backend != kernel_for_device:
        raise ValueError(
            f"ms_deform_attn backend {backend!r} cannot run on {device.type} tensors; move the "
            f"inputs to {'the GPU' if backend == 'cuda' else 'the CPU'} or use backend='auto'."
        )
    return backend


def ms_deform_attn_pytorch(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Reference implementation with ``F.grid_sample`` (bilinear, zero padding).

    Shapes as in :func:`ms_deform_attn`. A location ``u`` in [0, 1] maps to the pixel coordinate
    ``u * W - 0.5`` (``align_corners=False``), the convention of the compiled kernels.
    """
    batch, _, heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    value_per_level = value.split([h * w for h, w in shapes], dim=1)
    grids = 2.0 * sampling_locations - 1.0  # grid_sample wants [-1, 1]
    sampled = []
    for level, (height, width) in enumerate(shapes):
        # [B, H*W, heads, D] -> [B*heads, D, H, W]
        value_l = value_per_level[level].flatten(2).transpose(1, 2)
        value_l = value_l.reshape(batch * heads, head_dim, height, width)
        # [B, Q, heads, P, 2] -> [B*heads, Q, P, 2]
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(
            F.grid_sample(
                value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False
            )
        )  # [B*heads, D, Q, P]
    # [B, Q, heads, L, P] -> [B*heads, 1, Q, L*P]
    weights = attention_weights.transpose(1, 2).reshape(
        batch * heads, 1, num_queries, num_levels * num_points
    )
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)
    return out.view(batch, heads * head_dim, num_queries).transpose(1, 2).contiguous()


class _CompiledMSDeformAttn(torch.autograd.Function):
    """Autograd wrapper around the compiled forward/backward kernels (CPU or CUDA)."""

    @staticmethod
    def forward(ctx, value, spatial_shapes, level_start_index, sampling_locations, weights):
        ext = _load_extension()
        assert ext is not None, "resolve_backend() admits compiled backends only when built"
        out = ext.ms_deform_attn_forward(
            value, spatial_shapes, level_start_index, sampling_locations, weights
        )
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations, weights)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        value, spatial_shapes, level_start_index, sampling_locations, weights = ctx.saved_tensors
        grad_value, grad_locations, grad_weights = _load_extension().ms_deform_attn_backward(
            value,
            spatial_shapes,
            level_start_index,
            sampling_locations,
            weights,
            grad_output.contiguous(),
        )
        return grad_value, None, None, grad_locations, grad_weights


def _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, weights) -> None:
    if value.dim() != 4:
        raise ValueError(f"value must be [B, S, heads, head_dim], got shape {tuple(value.shape)}.")
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(
            "sampling_locations must be [B, Q, heads, L, P, 2], got shape "
            f"{tuple(sampling_locations.shape)}."
        )
    batch, num_keys, heads, _ = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    if sampling_locations.shape[0] != batch or sampling_locations.shape[2] != heads:
        raise ValueError(
            f"sampling_locations {tuple(sampling_locations.shape)} does not match value "
            f"{tuple(value.shape)} in batch size or number of heads."
        )
    expected = (batch, num_queries, heads, num_levels, num_points)
    if tuple(weights.shape) != expected:
        raise ValueError(
            f"attention_weights must have shape {expected}, got {tuple(weights.shape)}."
        )
    if spatial_shapes.shape != (num_levels, 2) or level_start_index.shape != (num_levels,):
        raise ValueError(
            f"spatial_shapes must be [L, 2] and level_start_index [L] with L={num_levels}, got "
            f"{tuple(spatial_shapes.shape)} and {tuple(level_start_index.shape)}."
        )
    # The compiled kernels trust the level table, so check it here (a tiny host copy).
    shapes = spatial_shapes.detach().cpu().long()
    areas = shapes[:, 0] * shapes[:, 1]
    if bool((shapes <= 0).any()) or int(areas.sum()) != num_keys:
        raise ValueError(
            f"value has {num_keys} keys but spatial_shapes {shapes.tolist()} (all positive) sum "
            f"to {int(areas.sum())}; flatten every level of the feature pyramid into value."
        )
    expected_starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    if not torch.equal(level_start_index.detach().cpu().long(), expected_starts):
        raise ValueError(
            f"level_start_index {level_start_index.tolist()} must be the exclusive cumulative "
            f"sum of the level areas, {expected_starts.tolist()}."
        )


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Multi-scale deformable attention: weighted bilinear samples of a feature pyramid.

    Args:
        value: [B, S, heads, head_dim] features of all levels flattened row-major and
            concatenated, S = sum(H_l * W_l).
        spatial_shapes: int64 [L, 2], (H_l, W_l) of each level.
        level_start_index: int64 [L], offset of each level in S (exclusive cumsum of H_l * W_l).
        sampling_locations: [B, Q, heads, L, P, 2] normalised (x, y); (0, 0) is the top-left
            corner of the top-left pixel and (1, 1) the bottom-right corner of the bottom-right
            one. Samples outside the map read zeros.
        attention_weights: [B, Q, heads, L, P], usually a softmax over L*P.
        backend: ``"auto"``, ``"pytorch"``, ``"cpp"`` or ``"cuda"`` (see module docstring).

    Returns:
        [B, Q, heads * head_dim], same dtype as ``value``. The compiled kernels compute in
        float32 for float16/bfloat16 inputs.
    """
    _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    chosen = resolve_backend(backend, value.device)
    if chosen == "pytorch":
        return ms_deform_attn_pytorch(value, spatial_shapes, sampling_locations, attention_weights)
    return _CompiledMSDeformAttn.apply(
        value.contiguous(),
        spatial_shapes.to(device=value.device, dtype=torch.long).contiguous(),
        level_start_index.to(device=value.device, dtype=torch.long).contiguous(),
        sampling_locations.contiguous(),
        attention_weights.contiguous(),
    )
