"""Contract tests of the positional encodings and the deformable-attention pixel decoder."""

import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec

from uniovseg.config import add_uniovseg_config
from uniovseg.modeling.pixel_decoder import MSDeformAttnPixelDecoder, PixelDecoderOutput
from uniovseg.modeling.position_encoding import (
    PositionEmbeddingRandom,
    PositionEmbeddingSine,
    build_position_encoding,
)

# Tiny fake backbone: ConvNeXt-like strides, few channels.
TINY_SHAPES = {
    "res2": ShapeSpec(channels=8, stride=4),
    "res3": ShapeSpec(channels=16, stride=8),
    "res4": ShapeSpec(channels=24, stride=16),
    "res5": ShapeSpec(channels=32, stride=32),
}
RELEASE_SHAPES = {
    "res2": ShapeSpec(channels=192, stride=4),
    "res3": ShapeSpec(channels=384, stride=8),
    "res4": ShapeSpec(channels=768, stride=16),
    "res5": ShapeSpec(channels=1536, stride=32),
}


def tiny_cfg(dim: int = 32):
    cfg = get_cfg()
    add_uniovseg_config(cfg)
    pd = cfg.MODEL.UNIOVSEG.PIXEL_DECODER
    pd.CONV_DIM = pd.MASK_DIM = dim
    pd.NUM_ENCODER_LAYERS = 2
    pd.DIM_FEEDFORWARD = 64
    pd.DEFORM_ATTN_BACKEND = "pytorch"
    return cfg


def fake_features(batch: int, height: int, width: int, shapes=TINY_SHAPES):
    return {
        name: torch.randn(batch, spec.channels, height // spec.stride, width // spec.stride)
        for name, spec in shapes.items()
    }


# ----------------------------------------------------------------- position encodings
def test_random_fourier_known_values():
    pe = PositionEmbeddingRandom(num_pos_feats=2)
    pe.positional_encoding_gaussian_matrix.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.5]]))
    # (x, y) = (0.75, 0.25): centred (0.5, -0.5); phases 2 pi (0.5, -0.25).
    out = pe.encode_coords(torch.tensor([0.75, 0.25]))
    expected = torch.tensor(
        [math.sin(math.pi), math.sin(-math.pi / 2), -1.0, math.cos(math.pi / 2)]
    )
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_sine_known_values():
    pe = PositionEmbeddingSine(num_pos_feats=4, temperature=100.0, scale=1.0)
    out = pe.encode_coords(torch.tensor([0.5, 0.2]))
    # Wavelengths for k = 0..3: 100 ** (2 * (k // 2) / 4) = 1, 1, 10, 10; y channels first.
    y, x = 0.2, 0.5
    expected = [math.sin(y), math.cos(y), math.sin(y / 10), math.cos(y / 10)]
    expected += [math.sin(x), math.cos(x), math.sin(x / 10), math.cos(x / 10)]
    torch.testing.assert_close(out, torch.tensor(expected), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["random", "sine"])
def test_map_encoding_is_pixel_centre_encoding(kind):
    pe = build_position_encoding(kind, 16)
    grid = pe(torch.zeros(2, 3, 4, 6))
    assert grid.shape == (1, 16, 4, 6)
    # Pixel (row 1, column 4) of a 4 x 6 map has centre ((4 + 0.5) / 6, (1 + 0.5) / 4).
    torch.testing.assert_close(grid[0, :, 1, 4], pe.encode_coords(torch.tensor([4.5 / 6, 1.5 / 4])))


def test_random_fourier_matrix_is_a_persistent_buffer_loaded_not_redrawn():
    torch.manual_seed(1)
    a = PositionEmbeddingRandom(8)
    torch.manual_seed(2)
    b = PositionEmbeddingRandom(8)
    assert "positional_encoding_gaussian_matrix" in a.state_dict()
    assert not list(a.parameters())
    assert not torch.equal(
        a.positional_encoding_gaussian_matrix, b.positional_encoding_gaussian_matrix
    )
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.positional_encoding_gaussian_matrix, b.positional_encoding_gaussian_matrix)


def test_unknown_position_encoding_is_rejected():
    with pytest.raises(ValueError, match="random"):
        build_position_encoding("learned", 16)


# ----------------------------------------------------------------- pixel decoder
def test_output_shapes_non_square():
    decoder = MSDeformAttnPixelDecoder(tiny_cfg(), TINY_SHAPES)
    out = decoder.forward_features(fake_features(2, 128, 96))
    assert isinstance(out, PixelDecoderOutput)
    assert out.mask_features.shape == (2, 32, 32, 24)
    assert [tuple(f.shape) for f in out.multi_scale_features] == [
        (2, 32, 4, 3),
        (2, 32, 8, 6),
        (2, 32, 16, 12),
    ]
    assert torch.isfinite(out.mask_features).all()


def test_res2_only_feeds_the_mask_features_and_levels_interact():
    decoder = MSDeformAttnPixelDecoder(tiny_cfg(), TINY_SHAPES).eval()
    feats = fake_features(1, 64, 64)
    base = decoder(feats)
    changed = decoder({**feats, "res2": torch.randn_like(feats["res2"])})
    for a, b in zip(base.multi_scale_features, changed.multi_scale_features, strict=True):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(base.mask_features, changed.mask_features)
    # The deformable encoder mixes levels: the stride-32 input changes the stride-8 output.
    changed = decoder({**feats, "res5": torch.randn_like(feats["res5"])})
    assert not torch.allclose(base.multi_scale_features[2], changed.multi_scale_features[2])


def test_every_parameter_gets_a_gradient():
    decoder = MSDeformAttnPixelDecoder(tiny_cfg(), TINY_SHAPES)
    # Deformable attention starts with zero offset/weight matrices, so at initialisation no
    # gradient reaches its queries (and the level embedding); perturb them as training would.
    with torch.no_grad():
        for layer in decoder.transformer.encoder.layers:
            layer.self_attn.sampling_offsets.weight.normal_(std=0.01)
            layer.self_attn.attention_weights.weight.normal_(std=0.01)
    out = decoder(fake_features(1, 64, 64))
    loss = out.mask_features.square().mean() + sum(
        f.square().mean() for f in out.multi_scale_features
    )
    loss.backward()
    no_grad = [n for n, p in decoder.named_parameters() if p.grad is None or not p.grad.any()]
    assert not no_grad


def test_release_names_and_checkpoint_order():
    cfg = get_cfg()
    add_uniovseg_config(cfg)
    with torch.device("meta"):
        decoder = MSDeformAttnPixelDecoder(cfg, RELEASE_SHAPES)
    shapes = {k: tuple(v.shape) for k, v in decoder.state_dict().items()}
    # Coarse to fine input projections, channel LayerNorm, random Fourier buffer, res2 FPN level.
    assert shapes["input_proj.0.0.weight"] == (256, 1536, 1, 1)
    assert shapes["input_proj.2.0.weight"] == (256, 384, 1, 1)
    assert shapes["input_proj.0.1.weight"] == (256,)
    assert decoder.input_proj[0][1].eps == 1e-6
    assert shapes["pe_layer.positional_encoding_gaussian_matrix"] == (2, 128)
    assert shapes["adapter_1.weight"] == (256, 192, 1, 1) and "adapter_1.bias" not in shapes
    assert shapes["layer_1.weight"] == (256, 256, 3, 3)
    assert shapes["transformer.level_embed"] == (3, 256)
    assert shapes["transformer.encoder.layers.5.linear1.weight"] == (1024, 256)
    assert "transformer.encoder.layers.6.norm1.weight" not in shapes


def test_paper_variants_build_and_run():
    cfg = tiny_cfg()
    cfg.MODEL.UNIOVSEG.PIXEL_DECODER.INPUT_PROJ_NORM = "GN"
    cfg.MODEL.UNIOVSEG.PIXEL_DECODER.POSITION_ENCODING = "sine"
    decoder = MSDeformAttnPixelDecoder(cfg, TINY_SHAPES)
    assert isinstance(decoder.input_proj[0][1], torch.nn.GroupNorm)
    assert "pe_layer.positional_encoding_gaussian_matrix" not in decoder.state_dict()
    out = decoder(fake_features(1, 64, 64))
    assert out.mask_features.shape == (1, 32, 16, 16)


def test_bad_inputs_raise_value_errors():
    cfg = tiny_cfg()
    cfg.MODEL.UNIOVSEG.PIXEL_DECODER.TRANSFORMER_IN_FEATURES = ["res3", "res6"]
    with pytest.raises(ValueError, match="res6"):
        MSDeformAttnPixelDecoder(cfg, TINY_SHAPES)
    decoder = MSDeformAttnPixelDecoder(tiny_cfg(), TINY_SHAPES)
    feats = fake_features(1, 64, 64)
    del feats["res2"]
    with pytest.raises(ValueError, match="res2"):
        decoder(feats)
