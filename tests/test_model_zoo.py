"""Real architectures (torchvision, timm, Hugging Face, nn.MultiheadAttention) at tiny sizes: attention heads,
verify-after-apply, untouched layers, refusals, and the method x model coverage matrix.

Every model is randomly initialised and small (32-64 px, two blocks, widths of tens), so the whole file stays
within CI's budget; nothing is downloaded.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import pyprune
from pyprune.pruning.attention import find_units

tvm = pytest.importorskip("torchvision.models")
timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)  # the inputs drawn inside tests


def _quiet(make):
    def build():
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # HF config notes about token ids of a 100-token vocabulary
            return make().eval()

    return build


IDS = {"input_ids": torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(1))}
IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def tv_vit():
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64, num_classes=10
    )


def timm_vit():
    return timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=48, num_heads=4, num_classes=10
    )


def hf_gpt2():
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=32)
    return transformers.GPT2LMHeadModel(config)


def hf_bert():
    config = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=100,
        max_position_embeddings=32,
    )
    return transformers.BertForSequenceClassification(config)


def hf_llama():
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
        max_position_embeddings=32,
    )
    return transformers.LlamaForCausalLM(config)


def hf_vit():
    config = transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, num_labels=10,
    )  # fmt: skip
    return transformers.ViTForImageClassification(config)


class Encoder(nn.Module):
    """nn.TransformerEncoder with a classifier over the mean token."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(1))


def _outputs(model: nn.Module, inputs) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    return out if isinstance(out, torch.Tensor) else out.logits


def _zero_heads_reference(model: nn.Module, plan: pyprune.PruningPlan) -> nn.Module:
    """Independent reference for head removal: the dense model with the removed units' *value* rows (and
    biases) zeroed. A head whose values are zero adds nothing to the output projection, so removing it must give
    the same outputs; for an MLP unit the first layer's row is zeroed (GELU(0) = 0)."""
    reference = copy.deepcopy(model)
    for spec in find_units(reference):
        layer = next((la for la in plan.layers if la.name == spec.name), None)
        if layer is None or not layer.num_removed:
            continue
        value_reader = list(spec.readers)[-1]
        module = reference.get_submodule(value_reader)
        blocks = spec.readers[value_reader]
        start, width = blocks[-1]  # the value block (the only block of an MLP's first layer)
        rows = torch.cat(
            [torch.arange(start + u * width, start + (u + 1) * width) for u in layer.removed.tolist()]
        )
        with torch.no_grad():
            if isinstance(module, nn.MultiheadAttention):
                module.in_proj_weight[rows] = 0
                module.in_proj_bias[rows] = 0
            elif type(module).__name__ == "Conv1D":
                module.weight[:, rows] = 0
                module.bias[rows] = 0
            else:
                module.weight[rows] = 0
                if module.bias is not None:
                    module.bias[rows] = 0
    return reference


ATTENTION_MODELS = {
    "timm_vit": (timm_vit, IMAGES, 4),
    "tv_vit": (tv_vit, IMAGES, 4),
    "mha_encoder": (Encoder, torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(3)), 4),
    "hf_gpt2": (hf_gpt2, IDS, 4),
    "hf_bert": (hf_bert, IDS, 4),
    "hf_vit": (hf_vit, {"pixel_values": IMAGES}, 4),
    "hf_llama_gqa": (hf_llama, IDS, 2),  # 2 key/value groups of 2 query heads
}


@pytest.mark.parametrize("name", list(ATTENTION_MODELS))
def test_head_removal_equals_zeroing_the_heads_values(name):
    make, inputs, units = ATTENTION_MODELS[name]
    model = _quiet(make)()
    specs = [s for s in find_units(model) if s.granularity == "heads"]
    assert [s.num_units for s in specs] == [units] * 2
    # Only the attention layers: half of their heads (KV groups under GQA) go.
    amount = {spec.name: 0.5 for spec in specs}
    plan = pyprune.plan(model, "l1_filter", amount, example_input=inputs, measure=False)
    assert [la.num_removed for la in plan.layers if la.granularity == "heads"] == [units // 2] * 2
    reference = _zero_heads_reference(model, plan)
    pruned = plan.apply(copy.deepcopy(model))
    torch.testing.assert_close(_outputs(pruned, inputs), _outputs(reference, inputs), rtol=1e-4, atol=1e-5)
    after = [s for s in find_units(pruned) if s.granularity == "heads"]
    assert [s.num_units for s in after] == [units - units // 2] * 2
    assert all(s.head_dim == b.head_dim for s, b in zip(after, specs, strict=True))


def test_gpt2_mlp_units_equal_zeroing_them():
    model = _quiet(hf_gpt2)()
    mlps = [s.name for s in find_units(model) if s.granularity == "units"]
    plan = pyprune.plan(model, "l2_filter", dict.fromkeys(mlps, 0.25), example_input=IDS, measure=False)
    reference = _zero_heads_reference(model, plan)
    pruned = plan.apply(copy.deepcopy(model))
    torch.testing.assert_close(_outputs(pruned, IDS), _outputs(reference, IDS), rtol=1e-4, atol=1e-5)
    assert pruned.config.n_inner == 96  # 128 hidden units, a quarter removed, written into the config


def test_gqa_keeps_whole_key_value_groups_and_the_config_round_trips(tmp_path):
    model = _quiet(hf_llama)()
    plan = pyprune.plan(model, "l1_filter", 0.5, example_input=IDS)
    assert plan.options["hf_config"] == "rewritten"
    pruned = plan.apply(copy.deepcopy(model))
    attention = pruned.model.layers[0].self_attn
    assert (attention.q_proj.out_features, attention.k_proj.out_features) == (
        16,
        8,
    )  # 2 of 4 heads, 1 of 2 KV
    assert (pruned.config.num_attention_heads, pruned.config.num_key_value_heads) == (2, 1)
    assert pruned.config.head_dim == 8
    assert pruned.config.intermediate_size == 32
    pruned.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(_outputs(again, IDS), _outputs(pruned, IDS))


def test_config_that_cannot_describe_fewer_heads_is_reported_and_skip_keeps_it_loadable(tmp_path):
    model = _quiet(hf_bert)()
    plan = pyprune.plan(model, "l1_filter", 0.5, example_input=IDS)
    assert "cannot describe 2 heads" in plan.options["hf_config"]
    assert "hidden_size" in plan.options["untouched"]["bert.pooler.dense"]
    plan = pyprune.plan(model, "l1_filter", 0.5, example_input=IDS, attention="skip")
    assert plan.options["hf_config"] == "rewritten"
    assert "attention='skip'" in plan.options["untouched"]["bert.encoder.layer.0.attention.self.query"]
    pruned = plan.apply(copy.deepcopy(model))
    pruned.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = transformers.BertForSequenceClassification.from_pretrained(tmp_path).eval()
    assert torch.equal(_outputs(again, IDS), _outputs(pruned, IDS))


class _Offset(nn.Module):
    """fc1 -> + a fixed buffer of fc1's width -> fc2: Torch-Pruning prunes fc1 but cannot shrink the buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)
        self.register_buffer("offset", torch.ones(16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x) + self.offset))


def test_apply_verifies_with_a_forward_pass_and_restores_the_model():
    model = _Offset()
    x = torch.randn(3, 8)
    plan = pyprune.plan(model, "l1_filter", 0.5, example_input=x, measure=False)
    params = dict(model.named_parameters())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="fails its forward check"):
        plan.apply(model)
    assert all(p is params[n] for n, p in model.named_parameters())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not hasattr(model, "pyprune_history")
    model(x)


def test_planning_works_inside_no_grad_and_with_tuple_inputs():
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.out = nn.Linear(4, 8), nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x, y):
            return self.out(torch.relu(self.a(x)) + torch.relu(self.b(y)))

    model = Two()
    inputs = (torch.randn(3, 4), torch.randn(3, 4))
    with torch.no_grad():
        plan = pyprune.plan(model, "l1_filter", 0.5, example_input=inputs)
    pruned = plan.apply(copy.deepcopy(model))
    assert pruned.a.out_features == pruned.b.out_features == 4
    assert pruned(*inputs).shape == (3, 2)


def test_grouped_convolution_groups_are_left_untouched_with_the_reason():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU(), nn.Conv2d(8, 16, 1),
        nn.ReLU(), nn.Conv2d(16, 4, 1),
    )  # fmt: skip
    x = torch.randn(2, 3, 8, 8)
    plan = pyprune.plan(model, "l1_filter", 0.5, example_input=x)
    assert [la.name for la in plan.layers] == ["4"]
    assert "grouped convolution '2' (groups=2)" in plan.options["untouched"]["0"]
    assert plan.options["untouched"]["6"] == "output layer, left out by default"
    assert plan.apply(copy.deepcopy(model))(x).shape == (2, 4, 8, 8)


def test_a_criterion_that_cannot_score_heads_refuses_at_planning_naming_the_layer():
    # Taylor's FLOPs penalty is defined per channel, not per head.
    model = _quiet(Encoder)()
    x = torch.randn(4, 6, 32)
    data = [(x, torch.randint(0, 10, (4,)))]
    options = {"example_input": x, "data": data, "progress": False, "flops_lambda": 1e-3}
    with pytest.raises(ValueError, match=r"encoder\.layers\.0\.self_attn.*attention='skip'"):
        pyprune.plan(model, "taylor", 0.3, **options)
    plan = pyprune.plan(model, "taylor", 0.3, attention="skip", **options)
    assert plan.apply(copy.deepcopy(model))(x).shape == (4, 10)


def _lm_loss(output, target):
    # Oracle ablation hands the loss the first tensor of the output; Taylor the model's output object.
    logits = output if isinstance(output, torch.Tensor) else output.logits
    return nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())


HEAD_DATA = {
    "mha_encoder": (Encoder, ATTENTION_MODELS["mha_encoder"][1], torch.arange(2), None),
    "hf_gpt2": (hf_gpt2, IDS, IDS["input_ids"], _lm_loss),
}


@pytest.mark.parametrize("method", ["taylor", "oracle", "cka_single", "cka_greedy"])
@pytest.mark.parametrize("name", list(HEAD_DATA))
def test_data_driven_criteria_remove_whole_heads(name, method):
    make, inputs, target, loss = HEAD_DATA[name]
    model = _quiet(make)()
    specs = [s for s in find_units(model) if s.granularity == "heads"]
    data = [(inputs["input_ids"] if isinstance(inputs, dict) else inputs, target)]
    options = {"loss_fn": loss} if loss is not None else {}
    if method != "cka_single":
        options["progress"] = False
    plan = pyprune.plan(
        model,
        method,
        {spec.name: 0.5 for spec in specs},
        example_input=inputs,
        data=data,
        scope="layer",
        **options,
    )
    assert [(la.name, la.num_removed) for la in plan.layers if la.num_removed] == [(s.name, 2) for s in specs]
    pruned = plan.apply(copy.deepcopy(model))
    assert [s.num_units for s in find_units(pruned) if s.granularity == "heads"] == [2, 2]
    reference = _zero_heads_reference(model, plan)
    torch.testing.assert_close(_outputs(pruned, inputs), _outputs(reference, inputs), rtol=1e-4, atol=1e-5)


def test_unstructured_plans_list_what_they_leave_out():
    model = _quiet(tv_vit)()
    plan = pyprune.plan(model, "magnitude", 0.5, example_input=IMAGES, measure=False)
    untouched = plan.options["untouched"]
    assert "in_proj_weight" in untouched["encoder.layers.encoder_layer_0.self_attention"]
    assert untouched["heads.head"] == "output layer, left out by default"


def test_sipp_leaves_depthwise_convs_and_mha_out_proj_out_and_lists_them():
    model = _quiet(lambda: tvm.mobilenet_v2(width_mult=0.25, num_classes=10))()
    data = [(torch.randn(8, 3, 32, 32), torch.zeros(8, dtype=torch.long))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a sensitivity set far below the bound's size
        plan = pyprune.plan(model, "sipp_det", 0.5, data=data, progress=False)
    assert "depthwise" in plan.options["untouched"]["features.1.conv.0.0"]
    pruned = plan.apply(copy.deepcopy(model))
    assert pruned(IMAGES).shape == (2, 10)


def test_capture_and_compare_models_take_dict_batches():
    model = _quiet(hf_bert)()
    layers = ["bert.encoder.layer.0.output.dense", "bert.encoder.layer.1.output.dense"]
    batches = [
        {"input_ids": IDS["input_ids"][i : i + 1], "attention_mask": torch.ones(1, 12)} for i in range(2)
    ]
    acts = pyprune.capture(model, batches, layers)
    with torch.no_grad():
        hidden = model.bert(**IDS, output_hidden_states=True).hidden_states
    # The second block's dense output, before its residual LayerNorm, is independent of the capture code:
    block = model.bert.encoder.layer[1]
    with torch.no_grad():
        expected = block.output.dense(block.intermediate(block.attention(hidden[1])[0]))
    torch.testing.assert_close(acts[layers[1]], expected)
    image_model = _quiet(hf_vit)()
    by_key = pyprune.capture(
        image_model, [{"pixel_values": IMAGES, "labels": None}], "classifier", input_key="pixel_values"
    )
    assert by_key["classifier"].shape == (2, 10)
    fed = pyprune.capture(image_model, [IMAGES], "classifier", forward=lambda m, x: m(pixel_values=x))
    torch.testing.assert_close(fed["classifier"], by_key["classifier"])
    result = pyprune.compare_models(model, model, batches, layers_a=layers, progress=False)
    torch.testing.assert_close(result.values.diagonal(), torch.ones(2, dtype=result.values.dtype))


@pytest.mark.slow
def test_pruned_models_compile_and_export():
    cnn = _quiet(lambda: tvm.mobilenet_v2(width_mult=0.25, num_classes=10))()
    transformer = _quiet(timm_vit)()
    for model in (cnn, transformer):
        pyprune.prune(model, "l1_filter", 0.5, example_input=IMAGES, measure=False)
        expected = _outputs(model, IMAGES)
        exported = torch.export.export(model, (IMAGES,))
        torch.testing.assert_close(exported.module()(IMAGES), expected, rtol=1e-4, atol=1e-5)
        compiled = torch.compile(model, backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(IMAGES), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_readme_your_own_model_snippet_runs(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    snippet = next(block for block in blocks if 'save_pretrained("pruned-lm")' in block)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' loading report
        exec(compile(snippet, "README.md", "exec"), namespace)
    lm, again, vit = namespace["lm"], namespace["again"].eval(), namespace["vit"]
    config = lm.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.intermediate_size) == (4, 1, 344)
    ids = {"input_ids": torch.randint(0, 32000, (1, 8))}
    assert torch.equal(_outputs(again, ids), _outputs(lm.eval(), ids))
    dense = sum(p.numel() for p in timm.create_model("vit_tiny_patch16_224").parameters())
    assert sum(p.numel() for p in vit.parameters()) < dense
    assert namespace["cnn"](torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def _shufflenet():
    model = tvm.shufflenetv2.ShuffleNetV2([1, 1, 1], [8, 16, 32, 64, 128], num_classes=10).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
                module.bias.uniform_(-0.5, 0.5)
    return model


def test_shufflenet_groups_through_the_channel_shuffle_are_left_whole_and_the_rest_is_exact():
    # The shuffle (view into (N, 2, C/2, H, W), transpose, view back) reorders channels, which Torch-Pruning maps as
    # if it did not: cutting through it gave a model that ran but differed from the original with those channels
    # gone. Such groups are now left whole, with the reason; a batch of one traces.
    model = _quiet(_shufflenet)()
    x = IMAGES[:1]
    plan = pyprune.plan(model, "l1_filter", 0.3, example_input=x)
    untouched = plan.options["untouched"]
    for name in ("stage2.0.branch1.2", "stage2.0.branch2.5", "stage3.0.branch2.5"):
        assert "reorders them (a channel shuffle)" in untouched[name], name
    pruned = plan.apply(copy.deepcopy(model))
    assert pruned(x).shape == (1, 10)
    assert plan.totals["params"][1] == sum(p.numel() for p in pruned.parameters()) < plan.totals["params"][0]
    # The groups inside a branch (a depthwise conv and its producer) cut exactly: removing their channels equals
    # zeroing them at the depthwise conv's BatchNorm, which nothing after it but the dropped inputs reads.
    inner = {layer.name: 0.5 for layer in plan.layers if layer.name.endswith("branch2.3")}
    assert len(inner) == 3
    plan = pyprune.plan(model, "l1_filter", inner, example_input=x)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for layer in plan.layers:
            if not layer.num_removed:
                continue
            norm = reference.get_submodule(layer.name.removesuffix("3") + "4")
            norm.weight[layer.removed] = 0
            norm.bias[layer.removed] = 0
    pruned = plan.apply(copy.deepcopy(model))
    with torch.no_grad():
        torch.testing.assert_close(pruned(IMAGES), reference(IMAGES), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_full_size_shufflenet_plans_and_lists_what_torch_pruning_cannot_group():
    model = _quiet(tvm.shufflenet_v2_x1_0)().eval()
    x = torch.randn(1, 3, 224, 224)
    plan = pyprune.plan(model, "l1_filter", 0.3, example_input=x)
    assert "Torch-Pruning could not group its channels" in plan.options["untouched"]["stage2.0.branch1.2"]
    pruned = plan.apply(copy.deepcopy(model))
    assert plan.totals["flops"] == [pyprune.count(model, x).flops, pyprune.count(pruned, x).flops]
    assert plan.totals["flops"][1] < plan.totals["flops"][0]


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_one_shot_methods_calibrate_torchvision_vit_blocks_and_list_what_they_leave(method):
    # torchvision names its blocks ("encoder_layer_0") and its attention hands out_proj to a fused kernel: the
    # calibration copy calls out_proj as a module, so its input statistics exist.
    model = _quiet(tv_vit)()
    data = [(IMAGES, torch.tensor([1, 2]))]
    plan = pyprune.plan(model, method, 0.5, data=data, progress=False)
    names = [layer.name for layer in plan.layers]
    assert "encoder.layers.encoder_layer_0.self_attention.out_proj" in names
    assert all(name.startswith("encoder.layers.encoder_layer_") for name in names)
    untouched = plan.options["untouched"]
    assert untouched["encoder.layers.encoder_layer_1.self_attention"].startswith("MultiheadAttention: ")
    assert "outside the blocks 'encoder.layers'" in untouched["conv_proj"]
    assert _outputs(plan.apply(copy.deepcopy(model)), IMAGES).shape == (2, 10)
