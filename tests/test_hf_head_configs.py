"""Head plans on Hugging Face models whose config derives ``head_dim`` from ``hidden_size / num_attention_heads``.

GPT-2, BERT and ViT configs have one ``num_attention_heads`` and no ``head_dim`` field, and transformers 5 dropped
the ``pruned_heads`` list, so ``from_pretrained`` cannot rebuild a model with fewer heads. The plan must say so
(printed too), and ``save_pruned`` / ``load_pruned`` must round-trip the model bit-exactly. If a transformers
release makes ``from_pretrained`` work again, ``test_from_pretrained_still_cannot_rebuild_fewer_heads`` fails and
the note should change.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import pyprune

transformers = pytest.importorskip("transformers")

IDS = {"input_ids": torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(1))}
IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def _gpt2() -> nn.Module:
    return transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=32)
    )


def _bert() -> nn.Module:
    return transformers.BertForSequenceClassification(
        transformers.BertConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100
        )
    )


def _vit() -> nn.Module:
    return transformers.ViTForImageClassification(
        transformers.ViTConfig(
            image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, num_labels=10,
        )
    )  # fmt: skip


CASES = [(_gpt2, IDS), (_bert, IDS), (_vit, IMAGES)]
IDS_ = ["gpt2", "bert", "vit"]


def _build(make) -> nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make().eval()


def _out(model: nn.Module, inputs) -> torch.Tensor:
    with torch.no_grad():
        return (model(**inputs) if isinstance(inputs, dict) else model(inputs)).logits


@pytest.mark.parametrize(("make", "inputs"), CASES, ids=IDS_)
def test_the_plan_says_how_to_save_a_model_with_fewer_heads(make, inputs, tmp_path) -> None:
    model = _build(make)
    plan = pyprune.plan(model, "l1_filter", 0.5, example_input=inputs)
    assert any(layer.granularity == "heads" and layer.num_kept == 2 for layer in plan.layers)
    note = plan.options["hf_config"]
    assert "cannot describe 2 heads of 8" in note
    assert "from_pretrained cannot rebuild" in note
    assert "pyprune.load_pruned" in note
    assert f"config: {note}" in str(plan).splitlines()
    pruned = plan.apply(copy.deepcopy(model))
    assert pruned.pyprune_config_note == note
    path = tmp_path / "pruned.pt"
    pyprune.save_pruned(pruned, path)
    again = pyprune.load_pruned(path, _build(make))
    assert torch.equal(_out(again, inputs), _out(pruned, inputs))


@pytest.mark.parametrize(("make", "inputs"), CASES, ids=IDS_)
def test_from_pretrained_still_cannot_rebuild_fewer_heads(make, inputs, tmp_path) -> None:
    pruned = _build(make)
    pyprune.prune(pruned, "l1_filter", 0.5, example_input=inputs)
    pruned.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
            type(pruned).from_pretrained(tmp_path)
