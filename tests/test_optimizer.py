"""Optimizer parameter groups (lr multiplier, no decay on norms/embeddings) and clipping."""

import torch
from detectron2.config import get_cfg
from torch import nn

from uniovseg.config import add_uniovseg_config
from uniovseg.engine.optimizer import FullModelClippedAdamW, build_optimizer, build_param_groups


class ChannelNorm(nn.Module):
    """Stands in for a custom norm class (recognised by its name)."""

    def __init__(self, channels):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.ModuleDict({"frozen": nn.Linear(2, 2), "adapter": nn.Linear(2, 2)})
        self.backbone["frozen"].requires_grad_(False)
        self.head = nn.Linear(2, 2)
        self.norm = nn.LayerNorm(2)
        self.custom_norm = ChannelNorm(2)
        self.level_embed = nn.Embedding(3, 2)
        self.corner_emb = nn.Parameter(torch.zeros(1, 2, 2))


def test_param_groups_follow_the_release_rules():
    groups = build_param_groups(Toy(), base_lr=1e-4, weight_decay=0.05, backbone_multiplier=0.1)
    by_name = {group["name"]: group for group in groups}
    assert "backbone.frozen.weight" not in by_name  # frozen parameters are left out
    assert by_name["backbone.adapter.weight"]["lr"] == 1e-4 * 0.1
    assert by_name["head.weight"] == {**by_name["head.weight"], "lr": 1e-4, "weight_decay": 0.05}
    for name in ["norm.weight", "norm.bias", "custom_norm.weight"]:
        assert by_name[name]["weight_decay"] == 0.0, name
    for name in ["level_embed.weight", "corner_emb"]:
        assert by_name[name]["weight_decay"] == 0.0, name


def test_full_model_clipping_bounds_the_global_norm():
    layer = nn.Linear(4, 4, bias=False)
    optimizer = FullModelClippedAdamW([{"params": [layer.weight]}], lr=0.0, clip_max_norm=1.0)
    layer.weight.grad = torch.full_like(layer.weight, 10.0)
    optimizer.step()
    assert torch.linalg.vector_norm(layer.weight.grad) <= 1.0 + 1e-5


def test_build_optimizer_from_config():
    cfg = get_cfg()
    add_uniovseg_config(cfg)
    optimizer = build_optimizer(cfg, Toy())
    assert isinstance(optimizer, FullModelClippedAdamW)
    assert optimizer.clip_max_norm == 1.0
    cfg.SOLVER.OPTIMIZER = "SGD"
    try:
        build_optimizer(cfg, Toy())
    except ValueError as error:
        assert "ADAMW" in str(error)
    else:
        raise AssertionError("an unsupported optimizer must be refused")
