"""Contract tests of the prompt encoder, the prompt mask decoder and the segmentation head."""

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from torch import nn

from uniovseg.config import add_uniovseg_config
from uniovseg.modeling.mask_decoder import (
    MaskDecoderOutput,
    PromptMaskDecoder,
    attention_mask_from_logits,
    box_cells,
)
from uniovseg.modeling.prompt_encoder import PromptEncoder, points_to_boxes
from uniovseg.modeling.segmentation_head import SegmentationHead
from uniovseg.modeling.transformer_layers import CrossAttentionLayer, MultiHeadAttention

DIM = 32
TINY_SHAPES = {
    "res2": ShapeSpec(channels=8, stride=4),
    "res3": ShapeSpec(channels=16, stride=8),
    "res4": ShapeSpec(channels=24, stride=16),
    "res5": ShapeSpec(channels=32, stride=32),
}


def tiny_cfg(num_layers: int = 2):
    cfg = get_cfg()
    add_uniovseg_config(cfg)
    pd = cfg.MODEL.UNIOVSEG.PIXEL_DECODER
    pd.CONV_DIM = pd.MASK_DIM = DIM
    pd.NUM_ENCODER_LAYERS = 2
    pd.DIM_FEEDFORWARD = 64
    pd.DEFORM_ATTN_BACKEND = "pytorch"
    md = cfg.MODEL.UNIOVSEG.MASK_DECODER
    md.HIDDEN_DIM = DIM
    md.NUM_LAYERS = num_layers
    md.DIM_FEEDFORWARD = 64
    return cfg


def fake_features(batch: int, height: int, width: int):
    return {
        name: torch.randn(batch, spec.channels, height // spec.stride, width // spec.stride)
        for name, spec in TINY_SHAPES.items()
    }


def tiny_head(num_layers: int = 2) -> SegmentationHead:
    return SegmentationHead(tiny_cfg(num_layers), TINY_SHAPES)


BOXES = torch.tensor(
    [
        [[8.0, 8.0, 40.0, 30.0], [50.0, 20.0, 90.0, 60.0], [0.0, 0.0, 96.0, 64.0]],
        [[30.0, 30.0, 34.0, 34.0], [10.0, 40.0, 20.0, 60.0], [60.0, 5.0, 95.0, 15.0]],
    ]
)
IMAGE_SIZE = (64, 96)  # (H, W)


# ----------------------------------------------------------------- prompt encoder
def test_points_to_boxes_scales_the_margin_with_the_input():
    points = torch.tensor([[100.0, 50.0]])
    # +/- 2 px on the 1024 canvas.
    assert points_to_boxes(points, (1024, 1024)).tolist() == [[98.0, 48.0, 102.0, 52.0]]
    # Half the width: half the x margin; a quarter of the height: a quarter of the y margin.
    assert points_to_boxes(points, (256, 512)).tolist() == [[99.0, 49.5, 101.0, 50.5]]


def test_prompt_tokens_follow_the_release_recipe():
    encoder = PromptEncoder(embed_dim=DIM, num_multimask_outputs=4)
    boxes = torch.tensor([[[8.0, 16.0, 24.0, 48.0]]])
    features = torch.full((1, DIM, 16, 16), 0.25)  # constant: every bilinear sample is 0.25
    corners = torch.tensor([[8.0 / 64, 16.0 / 64], [24.0 / 64, 48.0 / 64]])
    expected_corners = encoder.pos_emb.encode_coords(corners) + encoder.corner_emb[0] + 0.25

    points = encoder(boxes, features, prompt_type="point", image_size=(64, 64))
    assert points.shape == (1, 1, 7, DIM)
    point_extra = encoder.point_emb[0] + encoder.attr_emb.weight[1]
    torch.testing.assert_close(points[0, 0, :2], expected_corners + point_extra)
    torch.testing.assert_close(points[0, 0, 2:], encoder.mask_emb[0])

    box_tokens = encoder(boxes, features, prompt_type="box", image_size=(64, 64))
    torch.testing.assert_close(box_tokens[0, 0, :2], expected_corners + encoder.box_emb[0])
    torch.testing.assert_close(box_tokens[0, 0, 2:], encoder.mask_emb[0])


def test_content_feature_is_sampled_at_the_box_centre():
    encoder = PromptEncoder(embed_dim=DIM)
    features = torch.zeros(1, DIM, 16, 16)
    features[0, :, 5, 9] = 1.0  # the stride-4 cell covering x in [36, 40), y in [20, 24)
    hit = torch.tensor([[[30.0, 14.0, 46.0, 30.0]]])  # centre (38, 22): the cell's centre
    miss = torch.tensor([[[0.0, 0.0, 16.0, 16.0]]])
    with torch.no_grad():
        for p in (encoder.corner_emb, encoder.box_emb, encoder.mask_emb):
            p.zero_()
    base_hit = encoder.pos_emb.encode_coords(torch.tensor([[30 / 64, 14 / 64], [46 / 64, 30 / 64]]))
    tokens = encoder(hit, features, prompt_type="box", image_size=(64, 64))
    torch.testing.assert_close(tokens[0, 0, :2] - base_hit, torch.ones(2, DIM))
    base_miss = encoder.pos_emb.encode_coords(torch.tensor([[0.0, 0.0], [0.25, 0.25]]))
    tokens = encoder(miss, features, prompt_type="box", image_size=(64, 64))
    torch.testing.assert_close(tokens[0, 0, :2], base_miss)


# ----------------------------------------------------------------- attention pieces
def test_attention_mask_is_the_union_and_empty_rows_are_unmasked():
    logits = torch.full((1, 2, 2, 2, 2), -1.0)  # B=1, P=2, M=2, 2x2 pixels
    logits[0, 0, 0, 0, 0] = 0.5  # prompt 0: mask 0 covers pixel 0
    logits[0, 0, 1, 1, 1] = 0.0  # prompt 0: mask 1 covers pixel 3 (probability exactly 0.5)
    allowed = attention_mask_from_logits(logits)
    assert allowed.tolist() == [[[True, False, False, True], [True, True, True, True]]]


def test_multihead_attention_matches_torch_with_the_same_weights():
    torch_mha = nn.MultiheadAttention(DIM, 4, batch_first=True)
    ours = MultiHeadAttention(DIM, 4)
    ours.load_state_dict(torch_mha.state_dict())  # same names and shapes
    q, kv = torch.randn(2, 5, DIM), torch.randn(2, 7, DIM)
    allowed = torch.rand(2, 5, 7) > 0.4
    allowed[..., 0] = True
    # nn.MultiheadAttention masks where True; ours attends where True.
    expected = torch_mha(q, kv, kv, attn_mask=(~allowed).repeat_interleave(4, dim=0))[0]
    torch.testing.assert_close(ours(q, kv, kv, attn_mask=allowed[:, None]), expected)


def test_cross_attention_ignores_masked_keys():
    layer = CrossAttentionLayer(DIM, 4)
    x, memory, pos = torch.randn(1, 3, DIM), torch.randn(1, 6, DIM), torch.randn(1, 6, DIM)
    allowed = torch.zeros(1, 1, 3, 6, dtype=torch.bool)
    allowed[..., :2] = True
    out = layer(x, memory, pos=pos, query_pos=x, attn_mask=allowed)
    changed = memory.clone()
    changed[:, 2:] = torch.randn(1, 4, DIM)
    torch.testing.assert_close(layer(x, changed, pos=pos, query_pos=x, attn_mask=allowed), out)


def test_level_attention_masks_equal_resized_full_resolution_masks():
    """Our shortcut (resize pixel embeddings, then dot product) equals the release's recipe
    (dot product at stride 4, then bilinear resize of the logits)."""
    mask_embeds = torch.randn(2, 3, 4, DIM)
    pixel_embeds = torch.randn(2, DIM, 24, 16)
    full = torch.einsum("bpmc,bchw->bpmhw", mask_embeds, pixel_embeds).flatten(1, 2)
    release = F.interpolate(full, size=(6, 4), mode="bilinear", align_corners=False)
    level = F.interpolate(pixel_embeds, size=(6, 4), mode="bilinear", align_corners=False)
    ours = torch.einsum("bpmc,bchw->bpmhw", mask_embeds, level).flatten(1, 2)
    torch.testing.assert_close(ours, release, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------- the decoder / head
@pytest.mark.parametrize(("prompt_type", "num_masks"), [("point", 4), ("box", 1)])
def test_output_shapes(prompt_type, num_masks):
    head = tiny_head()
    out = head(fake_features(2, 64, 96), BOXES, prompt_type=prompt_type, image_size=IMAGE_SIZE)
    assert isinstance(out, MaskDecoderOutput)
    assert out.mask_logits.shape == (2, 3, num_masks, 16, 24)
    assert out.iou_logits.shape == (2, 3, num_masks)
    assert len(out.aux_outputs) == 2  # 1 initial + 2 layers = 3 predictions
    for aux in out.aux_outputs:
        assert aux.mask_logits.shape == out.mask_logits.shape
        assert aux.iou_logits.shape == out.iou_logits.shape
    assert torch.isfinite(out.mask_logits).all() and torch.isfinite(out.iou_logits).all()


def test_return_aux_false_gives_the_same_last_prediction():
    head = tiny_head().eval()
    feats = fake_features(2, 64, 96)
    full = head(feats, BOXES, prompt_type="point", image_size=IMAGE_SIZE)
    last = head(feats, BOXES, prompt_type="point", image_size=IMAGE_SIZE, return_aux=False)
    assert last.aux_outputs == []
    torch.testing.assert_close(last.mask_logits, full.mask_logits)
    torch.testing.assert_close(last.iou_logits, full.iou_logits)


@pytest.mark.parametrize("prompt_type", ["point", "box"])
def test_prompts_do_not_influence_each_other(prompt_type):
    head = tiny_head(num_layers=3).eval()
    feats = fake_features(2, 64, 96)
    pixel = head.forward_features(feats)
    out = head.forward_prompts(pixel, BOXES, prompt_type=prompt_type, image_size=IMAGE_SIZE)
    moved = BOXES.clone()
    moved[:, 1] = torch.tensor([70.0, 40.0, 95.0, 63.0])
    out2 = head.forward_prompts(pixel, moved, prompt_type=prompt_type, image_size=IMAGE_SIZE)
    keep = [0, 2]
    for a, b in zip([out, *out.aux_outputs], [out2, *out2.aux_outputs], strict=True):
        torch.testing.assert_close(
            a.mask_logits[:, keep], b.mask_logits[:, keep], atol=1e-5, rtol=0
        )
        torch.testing.assert_close(a.iou_logits[:, keep], b.iou_logits[:, keep], atol=1e-5, rtol=0)
    assert not torch.allclose(out.mask_logits[:, 1], out2.mask_logits[:, 1])


def test_padding_prompts_give_no_nan_and_change_nothing():
    head = tiny_head().eval()
    pixel = head.forward_features(fake_features(2, 64, 96))
    padded = torch.cat([BOXES[:, :2], torch.full((2, 2, 4), float("nan"))], dim=1)
    valid = torch.tensor([[True, True, False, False], [True, True, False, False]])
    out = head.forward_prompts(
        pixel, padded, prompt_type="point", image_size=IMAGE_SIZE, prompt_valid=valid
    )
    assert torch.isfinite(out.mask_logits).all() and torch.isfinite(out.iou_logits).all()
    assert all(torch.isfinite(a.mask_logits).all() for a in out.aux_outputs)
    alone = head.forward_prompts(pixel, BOXES[:, :2], prompt_type="point", image_size=IMAGE_SIZE)
    torch.testing.assert_close(out.mask_logits[:, :2], alone.mask_logits, atol=1e-5, rtol=0)


def test_every_parameter_gets_a_gradient():
    head = tiny_head()
    with torch.no_grad():  # see test_pixel_decoder: zero-initialised deformable matrices
        for layer in head.pixel_decoder.transformer.encoder.layers:
            layer.self_attn.sampling_offsets.weight.normal_(std=0.01)
            layer.self_attn.attention_weights.weight.normal_(std=0.01)
    feats = fake_features(1, 64, 96)
    loss = 0.0
    for prompt_type in ("point", "box"):
        out = head(feats, BOXES[:1], prompt_type=prompt_type, image_size=IMAGE_SIZE)
        for pred in [out, *out.aux_outputs]:
            loss = loss + pred.mask_logits.sigmoid().mean() + pred.iou_logits.square().mean()
    loss.backward()
    no_grad = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.any()]
    assert not no_grad


def test_paper_variants_build_and_run():
    cfg = tiny_cfg(num_layers=6)
    cfg.MODEL.UNIOVSEG.PIXEL_DECODER.INPUT_PROJ_NORM = "GN"
    for section in ("PIXEL_DECODER", "PROMPT_ENCODER", "MASK_DECODER"):
        cfg.MODEL.UNIOVSEG[section].POSITION_ENCODING = "sine"
    head = SegmentationHead(cfg, TINY_SHAPES)
    assert not [k for k in head.state_dict() if "gaussian" in k]
    out = head(fake_features(1, 64, 96), BOXES[:1], prompt_type="box", image_size=IMAGE_SIZE)
    assert len(out.aux_outputs) == 6
    assert torch.isfinite(out.mask_logits).all()


def test_bad_inputs_raise_value_errors():
    head = tiny_head()
    pixel = head.forward_features(fake_features(1, 64, 96))
    with pytest.raises(ValueError, match="prompt_type"):
        head.forward_prompts(pixel, BOXES[:1], prompt_type="mask", image_size=IMAGE_SIZE)
    with pytest.raises(ValueError, match="boxes"):
        head.forward_prompts(pixel, BOXES[0], prompt_type="box", image_size=IMAGE_SIZE)
    with pytest.raises(ValueError, match="prompt_valid"):
        head.forward_prompts(
            pixel,
            BOXES[:1],
            prompt_type="box",
            image_size=IMAGE_SIZE,
            prompt_valid=torch.ones(1, 3),
        )
    cfg = tiny_cfg()
    cfg.MODEL.UNIOVSEG.MASK_DECODER.HIDDEN_DIM = 64
    with pytest.raises(ValueError, match="HIDDEN_DIM"):
        SegmentationHead(cfg, TINY_SHAPES)


def test_predictor_is_a_prompt_mask_decoder_with_release_heads():
    head = tiny_head()
    assert isinstance(head.predictor, PromptMaskDecoder)
    assert len(head.predictor.mask_embed) == len(head.predictor.iou_embed) == 5
    assert head.predictor.iou_embed[0].layers[-1].out_features == 1


def test_cross_attention_masks_follow_the_previous_predictions():
    """Layer i attends (level i mod 3) only inside the union of prediction i's masks, resized
    as the release does (bilinear resize of the stride-4 logits, probability >= 0.5)."""
    head = tiny_head(num_layers=3).eval()
    feats = fake_features(2, 128, 192)
    boxes, image_size = BOXES * 2, (128, 192)
    # Random weights predict masks covering most pixels; shift the logits down (a constant
    # pixel channel times a negative embedding bias) so that masks cover about 20% of pixels.
    with torch.no_grad():
        head.predictor.feat_embed.bias[0] += 5.0
        logits = head(feats, boxes, prompt_type="point", image_size=image_size).mask_logits
        shift = torch.quantile(logits.flatten()[::7], 0.8).item() / 5.0
        for mlp in head.predictor.mask_embed:
            mlp.layers[-1].bias[0] -= shift
    recorded = []

    def recording(attend):
        def attend_and_record(*args, **kwargs):
            recorded.append(kwargs["attn_mask"])
            return attend(*args, **kwargs)

        return attend_and_record

    for layer in head.predictor.transformer_cross_attention_layers:
        layer.attend_projected = recording(layer.attend_projected)
    pixel = head.forward_features(feats)
    out = head.forward_prompts(pixel, boxes, prompt_type="point", image_size=image_size)
    predictions = [*out.aux_outputs, out]
    assert len(recorded) == 3
    for index, attn_mask in enumerate(recorded):
        level = pixel.multi_scale_features[index % 3]
        logits = predictions[index].mask_logits  # [B, P, M, H/4, W/4]
        resized = F.interpolate(
            logits.flatten(1, 2), size=level.shape[-2:], mode="bilinear", align_corners=False
        ).unflatten(1, logits.shape[1:3])
        expected = attention_mask_from_logits(resized)  # [B, P, h*w]
        expected = expected[:, :, None].expand(-1, -1, 7, -1).reshape(2, 1, -1, expected.shape[-1])
        assert attn_mask.shape == expected.shape
        # Pixels whose logit is within float noise of 0 may fall either way.
        near_zero = resized.abs().min(dim=2).values.flatten(2) < 1e-4
        near_zero = near_zero[:, :, None].expand(-1, -1, 7, -1).reshape(expected.shape)
        assert torch.equal(attn_mask[~near_zero], expected[~near_zero])
    # The case is not trivial: some masks do restrict attention.
    assert any(not m.all() for m in recorded)


def test_box_cells_are_the_cells_whose_centre_lies_in_the_box():
    # 64 x 96 frame, 4 x 6 grid of 16 px cells (centres at 8, 24, ...).
    boxes = torch.tensor([[[20.0, 0.0, 60.0, 30.0], [0.0, 0.0, 4.0, 4.0]]])
    cells = box_cells(boxes, (64, 96), (4, 6)).view(1, 2, 4, 6)
    expected = torch.zeros(4, 6, dtype=torch.bool)
    expected[0:2, 1:4] = True  # centres x 24, 40, 56 and y 8, 24
    assert torch.equal(cells[0, 0], expected)
    assert not cells[0, 1].any()  # smaller than a cell: no centre inside


def test_box_attention_in_box_limits_box_prompts_only():
    """With BOX_ATTENTION_IN_BOX, every box prompt's attention stays inside its box cells (or
    is unlimited at a level where the box holds no cell centre); point prompts and a decoder
    without the option are unchanged."""
    cfg = tiny_cfg(num_layers=3)
    torch.manual_seed(0)
    plain = SegmentationHead(cfg, TINY_SHAPES).eval()
    cfg.MODEL.UNIOVSEG.MASK_DECODER.BOX_ATTENTION_IN_BOX = True
    limited = SegmentationHead(cfg, TINY_SHAPES).eval()
    limited.load_state_dict(plain.state_dict())
    feats = fake_features(2, 128, 192)
    boxes, image_size = BOXES * 2, (128, 192)
    recorded = []
    for layer in limited.predictor.transformer_cross_attention_layers:
        attend = layer.attend_projected

        def attend_and_record(*args, _attend=attend, **kwargs):
            recorded.append(kwargs["attn_mask"])
            return _attend(*args, **kwargs)

        layer.attend_projected = attend_and_record
    with torch.no_grad():
        pixel = limited.forward_features(feats)
        out = limited.forward_prompts(pixel, boxes, prompt_type="box", image_size=image_size)
        assert len(recorded) == 3
        for index, attn_mask in enumerate(recorded):
            grid = pixel.multi_scale_features[index % 3].shape[-2:]
            cells = box_cells(boxes, image_size, grid)  # [B, P, h*w]
            cells = cells | ~cells.any(dim=-1, keepdim=True)
            cells = cells[:, :, None].expand(-1, -1, 7, -1).reshape(attn_mask.shape)
            assert not (attn_mask & ~cells).any()
            assert attn_mask.any(dim=-1).all()
        reference = plain(feats, boxes, prompt_type="box", image_size=image_size)
        assert not torch.allclose(out.mask_logits, reference.mask_logits)
        points_limited = limited(feats, boxes, prompt_type="point", image_size=image_size)
        points_plain = plain(feats, boxes, prompt_type="point", image_size=image_size)
        assert torch.equal(points_limited.mask_logits, points_plain.mask_logits)


def test_runs_and_backpropagates_under_bf16_autocast():
    head = tiny_head()
    feats = fake_features(1, 64, 96)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(feats, BOXES[:1], prompt_type="point", image_size=IMAGE_SIZE)
    assert torch.isfinite(out.mask_logits.float()).all()
    (out.mask_logits.float().mean() + out.iou_logits.float().mean()).backward()
    assert head.predictor.mask_embed[1].layers[0].weight.grad is not None


@pytest.mark.cuda
def test_cuda_matches_cpu():
    head = tiny_head().eval()
    feats = fake_features(1, 64, 96)
    expected = head(feats, BOXES[:1], prompt_type="point", image_size=IMAGE_SIZE)
    head = head.cuda()
    out = head(
        {k: v.cuda() for k, v in feats.items()},
        BOXES[:1].cuda(),
        prompt_type="point",
        image_size=IMAGE_SIZE,
    )
    torch.testing.assert_close(out.mask_logits.cpu(), expected.mask_logits, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(out.iou_logits.cpu(), expected.iou_logits, atol=1e-3, rtol=1e-3)


def test_prepared_memory_gives_the_same_outputs_for_every_chunk_of_prompts():
    """Decoding chunks of prompts against one prepared memory equals decoding them all at once
    from the pixel features (the memory only caches prompt-independent work)."""
    head = tiny_head(num_layers=3).eval()
    feats = fake_features(2, 128, 192)
    boxes, image_size = BOXES * 2, (128, 192)
    with torch.no_grad():
        pixel = head.forward_features(feats)
        whole = head.forward_prompts(pixel, boxes, prompt_type="point", image_size=image_size)
        memory = head.prepare_prompt_memory(pixel)
        chunks = [
            head.forward_prompts(memory, part, prompt_type="point", image_size=image_size)
            for part in boxes.split(1, dim=1)
        ]
    torch.testing.assert_close(
        torch.cat([c.mask_logits for c in chunks], dim=1), whole.mask_logits, rtol=1e-4, atol=1e-4
    )
    torch.testing.assert_close(
        torch.cat([c.iou_logits for c in chunks], dim=1), whole.iou_logits, rtol=1e-4, atol=1e-4
    )
    with pytest.raises(ValueError, match="decoder memory holds"):
        head.forward_prompts(memory, boxes[:1], prompt_type="point", image_size=image_size)
