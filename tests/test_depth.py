"""Depth pruning: block scores against direct float64 computations, removal, save/load."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import pyprune
from pyprune.pruning.depth import BlockPlan, find_residual_blocks

transformers = pytest.importorskip("transformers")


class Residual(nn.Module):
    def __init__(self, width: int, scale: float) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.scale * torch.tanh(self.linear(x))


class Stack(nn.Module):
    """Blocks of growing strength: block 0 is almost the identity."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList([Residual(6, s) for s in (0.01, 1.0, 0.3, 2.0)])
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def _batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(5, 3, 6, generator=g) for _ in range(2)]


def _boundaries(model: Stack, data: list[torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        x = torch.cat([b.reshape(-1, 6) for b in data]).double()
        states = [x]
        for block in model.blocks:
            states.append(block.double()(states[-1]))
        model.float()
    return states


def _linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    x = x - x.mean(0)
    y = y - y.mean(0)
    return float((x.t() @ y).norm() ** 2 / ((x.t() @ x).norm() * (y.t() @ y).norm()))


@pytest.mark.parametrize("n", [1, 2])
def test_scores_match_direct_definitions(n: int) -> None:
    model, data = Stack().eval(), _batches()
    states = _boundaries(model, data)
    for metric in ("angular", "bi", "cka"):
        got = pyprune.block_importance(model, data, metric, n=n, progress=False)
        assert got.blocks == [f"blocks.{i}" for i in range(4)]
        for start in range(4 - n + 1):
            x, y = states[start], states[start + n]
            cos = (x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1))
            want = {
                "angular": float(torch.arccos(cos.clamp(-1, 1)).mean() / math.pi),
                "bi": float(1 - cos.mean()),
                "cka": 1 - _linear_cka(x, y),
            }[metric]
            assert math.isclose(float(got.scores[start]), want, rel_tol=1e-4, abs_tol=1e-6), (metric, start)
    assert pyprune.block_importance(model, data, "bi", progress=False).best_run() == ["blocks.0"]


def test_plan_apply_and_round_trip(tmp_path) -> None:
    model, data = Stack().eval(), _batches()
    plan = pyprune.plan_blocks(model, data, 2, "angular", contiguous=False, progress=False)
    assert plan.removed == ["blocks.0", "blocks.2"]
    again = BlockPlan.from_dict(plan.to_dict())
    fresh = Stack().eval()
    pyprune.prune_blocks(model, data, 2, "angular", contiguous=False, progress=False)
    again.apply(fresh)
    assert len(fresh.blocks) == 2
    torch.testing.assert_close(fresh(data[0]), model(data[0]))
    pyprune.save_pruned(model, tmp_path / "m.pt")
    loaded = pyprune.load_pruned(tmp_path / "m.pt", Stack())
    assert torch.equal(loaded.eval()(data[0]), model(data[0]))
    with pytest.raises(ValueError, match="different architecture"):
        again.apply(fresh)


def test_hugging_face_decoder_rewrites_config_and_cache_indices(tmp_path) -> None:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 40, (2, 10))
    data = [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}]
    plan = pyprune.prune_blocks(model, data, 0.5, "bi", progress=False)
    assert len(plan.removed) == 2
    assert model.config.num_hidden_layers == 2
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    full = model(ids).logits
    generated = model.generate(ids[:1, :3], max_new_tokens=4, do_sample=False)  # exercises the KV cache
    assert generated.shape == (1, 7)
    model.save_pretrained(tmp_path)
    reloaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert len(reloaded.model.layers) == 2
    assert torch.equal(reloaded(ids).logits, full)


def test_gpt2_and_resnet_blocks() -> None:
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=3, n_head=2)
    ).eval()
    pyprune.prune_blocks(gpt2, [torch.randint(0, 40, (2, 8))], 1, "cka", progress=False)
    assert gpt2.config.n_layer == 2
    assert len(gpt2.transformer.h) == 2
    torchvision = pytest.importorskip("torchvision")
    resnet = torchvision.models.resnet18(num_classes=3).eval()
    assert find_residual_blocks(resnet) == ["layer1", "layer2", "layer3", "layer4"]
    scores = pyprune.block_importance(resnet, [torch.randn(3, 3, 32, 32)], "angular", progress=False)
    # First blocks of stages 2-4 downsample: they cannot be removed.
    assert [math.isinf(s) for s in scores.scores.tolist()] == [
        False,
        False,
        True,
        False,
        True,
        False,
        True,
        False,
    ]


def test_bad_arguments() -> None:
    model, data = Stack().eval(), _batches()
    with pytest.raises(ValueError, match="metric"):
        pyprune.block_importance(model, data, "cosine")
    with pytest.raises(ValueError, match="amount: removes 4 of 4"):
        pyprune.plan_blocks(model, data, 4)
    with pytest.raises(ValueError, match="blocks: 'head'"):
        pyprune.block_importance(model, data, blocks="head")
