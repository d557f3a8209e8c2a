"""One-shot LM pruning (Wanda, SparseGPT, magnitude N:M, OWL) against independent float64 references."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pyprune
from pyprune.pruning.oneshot import (
    owl_n_per_block,
    owl_sparsities,
    plan_oneshot,
    satisfies_n_m,
    semi_structured_unsupported,
    sparsegpt,
    to_semi_structured,
)
from pyprune.pruning.oneshot.calibration import is_conv1d, weight_matrix

transformers = pytest.importorskip("transformers")

VOCAB = 48


def _gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    return transformers.GPT2LMHeadModel(config).eval()


def _llama() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=16,
    )
    return transformers.LlamaForCausalLM(config).eval()


def _data() -> list:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (6, 12), generator=g)
    return [ids[:3], {"input_ids": ids[3:], "attention_mask": torch.ones(3, 12, dtype=torch.long)}]


def _layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    from pyprune.pruning.oneshot.calibration import find_blocks, is_prunable_linear

    ((name, container),) = find_blocks(model)
    return {f"{name}.{r}": m for r, m in container.named_modules() if is_prunable_linear(m)}


# ---------------------------------------------------------------------------------------- references (float64)


def _obs_reference(w: torch.Tensor, xtx: torch.Tensor, tokens: int, sparsity: float, n_m, block: int):
    """SparseGPT by its definition: one column at a time with explicit inverses of the remaining Hessian."""
    w = w.double().clone()
    rows, cols = w.shape
    h = xtx.double() * 2 / tokens
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h = h + torch.eye(cols, dtype=torch.float64) * 0.01 * torch.diagonal(h).mean()
    d = torch.tensor([torch.linalg.inv(h[j:, j:])[0, 0] for j in range(cols)], dtype=torch.float64)
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    for i in range(cols):
        if n_m is None and i % block == 0:
            end = min(i + block, cols)
            k = math.floor(sparsity * end * rows + 0.5) - math.floor(sparsity * i * rows + 0.5)
            saliency = w[:, i:end] ** 2 / d[i:end]
            lowest = torch.argsort(saliency.t().reshape(-1))[:k]
            part = torch.zeros(end - i, rows, dtype=torch.bool)
            part.view(-1)[lowest] = True
            mask[:, i:end] = part.t()
        if n_m is not None and i % n_m[1] == 0:
            saliency = w[:, i : i + n_m[1]] ** 2 / d[i : i + n_m[1]]
            lowest = torch.argsort(saliency, dim=1)[:, : n_m[1] - n_m[0]]
            mask[:, i : i + n_m[1]].scatter_(1, lowest, True)
        f_inv = torch.linalg.inv(h[i:, i:])
        q = w[:, i].masked_fill(mask[:, i], 0)
        err = (w[:, i] - q) / f_inv[0, 0]
        w[:, i:] -= err[:, None] * f_inv[0][None, :]
        w[:, i] = q
    return mask, w


def _sequential_reference(model, data, solve):
    """Prune a copy block by block, capturing each block's layer inputs with a full forward of the partly pruned
    copy (independent of pyprune's block-input capture)."""
    ref = copy.deepcopy(model)
    names = list(_layers(ref))
    blocks = {".".join(n.split(".")[:3]) for n in names}  # transformer.h.0, model.layers.0
    results = {}
    for block in sorted(blocks, key=lambda b: int(b.split(".")[-1])):
        members = [n for n in names if n.startswith(block + ".")]
        inputs = {n: [] for n in members}
        modules = dict(ref.named_modules())
        handles = [
            modules[n].register_forward_pre_hook(
                lambda m, a, store=inputs[n]: store.append(a[0].reshape(-1, a[0].shape[-1]).clone())
            )
            for n in members
        ]
        with torch.no_grad():
            for batch in data:
                ref(**batch) if isinstance(batch, dict) else ref(batch)
        for h in handles:
            h.remove()
        for n in members:
            x = torch.cat(inputs[n]).double()
            module = modules[n]
            w = weight_matrix(module).double()
            mask, new = solve(w, x)
            results[n] = (mask, new)
            with torch.no_grad():
                weight_matrix(module).copy_(new.to(module.weight.dtype))
    return results


def _wanda_solve(sparsity):
    def solve(w, x):
        score = w.abs() * (x * x).sum(0).sqrt()
        k = math.floor(sparsity * w.shape[1] + 0.5)
        order = torch.sort(score, dim=1, stable=True).indices[:, :k]
        mask = torch.zeros_like(w, dtype=torch.bool).scatter_(1, order, True)
        return mask, w.masked_fill(mask, 0)

    return solve


def _removed_matrix(plan, name, module) -> torch.Tensor:
    keep = plan.layer(name).keep_mask(module.weight.shape)
    return ~(keep.t() if is_conv1d(module) else keep)


# ---------------------------------------------------------------------------------------------------- tests


@pytest.mark.slow
@pytest.mark.parametrize("build", [_gpt2, _llama], ids=["gpt2", "llama_gqa"])
def test_wanda_matches_sequential_reference(build) -> None:
    model, data = build(), _data()
    plan = pyprune.plan(model, "wanda", 0.5, data=data, progress=False)
    ref = _sequential_reference(model, data, _wanda_solve(0.5))
    layers = _layers(model)
    assert set(ref) == {layer.name for layer in plan.layers}
    for name, (mask, _) in ref.items():
        assert torch.equal(_removed_matrix(plan, name, layers[name]), mask), name


@pytest.mark.parametrize("n_m", [None, (2, 4)])
def test_sparsegpt_solver_matches_obs_reference(n_m) -> None:
    g = torch.Generator().manual_seed(3)
    w = torch.randn(6, 24, generator=g, dtype=torch.float64)
    x = torch.randn(40, 24, generator=g, dtype=torch.float64) * torch.linspace(
        0.2, 3, 24, dtype=torch.float64
    )
    x[:, 5] = 0  # a dead input column
    mask, new = sparsegpt(w, x.t() @ x, 40, 0.5, n_m, block_size=8)
    want_mask, want = _obs_reference(w, x.t() @ x, 40, 0.5, n_m, 8)
    assert torch.equal(mask, want_mask)
    torch.testing.assert_close(new, want, rtol=1e-9, atol=1e-11)


@pytest.mark.slow
@pytest.mark.parametrize("build", [_gpt2, _llama], ids=["gpt2", "llama_gqa"])
def test_sparsegpt_plan_matches_sequential_reference(build) -> None:
    model, data = build(), _data()
    plan = pyprune.plan(model, "sparsegpt", 0.5, data=data, progress=False, block_size=8)

    def solve(w, x):
        return _obs_reference(w, x.t() @ x, x.shape[0], 0.5, None, 8)

    ref = _sequential_reference(model, data, solve)
    layers = _layers(model)
    for name, (mask, new) in ref.items():
        module = layers[name]
        assert torch.equal(_removed_matrix(plan, name, module), mask), name
        got = plan.weights[name].t() if is_conv1d(module) else plan.weights[name]
        torch.testing.assert_close(got, new, rtol=1e-4, atol=1e-5)


def _error(w, x, new):
    return float(torch.linalg.norm(x @ w.t() - x @ new.t()))


@settings(max_examples=15, deadline=None)
@given(
    rows=st.integers(8, 24),
    groups=st.integers(2, 8),
    seed=st.integers(0, 10_000),
    sparsity=st.sampled_from([0.25, 0.5, 0.75, None]),
)
def test_sparsegpt_reconstruction_never_worse_than_magnitude(rows, groups, seed, sparsity) -> None:
    # Over layers of >= 8 rows (real layers have hundreds). With 1-4 rows the greedy OBS order and the fixed
    # per-block budget of Frantar & Alistarh's Algorithm 1 can lose to magnitude (hypothesis found a 1 x 12
    # layer 1.7x worse), so the property is empirical, not a theorem.
    cols = 4 * groups
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    scale = torch.rand(cols, generator=g, dtype=torch.float64) * 4 + 0.05
    x = torch.randn(3 * cols, cols, generator=g, dtype=torch.float64) * scale
    n_m = (2, 4) if sparsity is None else None
    mask, new = sparsegpt(w, x.t() @ x, x.shape[0], 0.5 if sparsity is None else sparsity, n_m, block_size=8)
    magnitude = pyprune.pruning.oneshot.select_by_score(w, None, 0.5 if sparsity is None else sparsity, n_m)
    assert int(mask.sum()) == int(magnitude.sum())
    assert _error(w, x, new) <= _error(w, x, w.masked_fill(magnitude, 0)) * (1 + 1e-9)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "build"),
    [("magnitude", _gpt2), ("wanda", _gpt2), ("sparsegpt", _gpt2), ("sparsegpt", _llama)],
    ids=["magnitude-gpt2", "wanda-gpt2", "sparsegpt-gpt2", "sparsegpt-llama_gqa"],
)
def test_two_four_pattern_exact_after_apply(method, build) -> None:
    model, data = build(), _data()
    plan = pyprune.prune(model, method, 0.5, data=data, n_m=(2, 4), progress=False)
    assert plan.fraction_removed == 0.5
    for name, module in _layers(model).items():
        w = weight_matrix(module)
        assert satisfies_n_m(w, 2, 4), name
        assert int((w == 0).sum()) >= w.numel() // 2
    out = model(_data()[0]).logits
    assert torch.isfinite(out).all()


@pytest.mark.slow
def test_sparsegpt_plan_round_trips_and_reconstructs() -> None:
    model, data = _gpt2(), _data()
    plan = pyprune.plan(model, "sparsegpt", 0.5, data=data, progress=False)
    again = pyprune.PruningPlan.from_json(plan.to_json())
    for name, values in plan.weights.items():
        assert torch.equal(again.weights[name], values)
    pruned = copy.deepcopy(model)
    again.apply(pruned)
    name = plan.layers[0].name
    module = dict(pruned.named_modules())[name]
    expected = plan.weights[name].float() * plan.layer(name).keep_mask(module.weight.shape)
    assert torch.equal(module.weight, expected)
    # SparseGPT reconstructs: the first block's output is closer to the dense one than Wanda's.
    wanda = copy.deepcopy(model)
    pyprune.prune(wanda, "wanda", 0.5, data=data, progress=False)
    ids = data[0]
    dense = model(ids).logits
    assert torch.dist(pruned(ids).logits, dense) < torch.dist(wanda(ids).logits, dense) * 1.5


def test_failed_apply_restores_weights() -> None:
    model, data = _gpt2(), _data()
    plan = pyprune.plan(model, "sparsegpt", 0.5, data=data, progress=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan.layers[-1].removed = torch.tensor([10**9])  # caught before any change
    with pytest.raises(ValueError, match="outside"):
        plan.apply(model)
    plan.layers[-1].removed = torch.tensor([0])
    bad = next(iter(plan.weights))
    plan.weights[bad] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"plan\.weights"):
        plan.apply(model)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_owl_ratios_keep_the_target_mean() -> None:
    sparsities = owl_sparsities([0.01, 0.05, 0.02, 0.09], 0.6, 0.08)
    assert math.isclose(sum(sparsities) / 4, 0.6, rel_tol=1e-12)
    assert math.isclose(max(sparsities) - min(sparsities), 0.16, rel_tol=1e-12)
    assert sparsities.index(min(sparsities)) == 3  # most outliers, pruned least
    assert owl_sparsities([0.1, 0.1], 0.5) == [0.5, 0.5]
    with pytest.raises(ValueError, match="owl_lambda"):
        owl_sparsities([0.0, 1.0], 0.9, 0.2)
    n = owl_n_per_block([0.4, 0.6, 0.5, 0.45], 8)
    assert sum(n) == 16
    assert all(1 <= v <= 7 for v in n)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_owl_plan_mean_sparsity_is_target(method) -> None:
    model, data = _llama(), _data()
    plan = pyprune.plan(model, method, 0.5, data=data, owl=True, owl_threshold=2.0, progress=False)
    sparsities = plan.options["block_sparsity"]
    assert math.isclose(sum(sparsities) / len(sparsities), 0.5, rel_tol=1e-12)
    assert math.isclose(plan.fraction_removed, 0.5, abs_tol=1e-3)


def test_argument_errors() -> None:
    model, data = _gpt2(), _data()
    with pytest.raises(ValueError, match="amount: n_m"):
        pyprune.plan(model, "wanda", 0.3, data=data, n_m=(2, 4))
    with pytest.raises(ValueError, match="data: wanda needs calibration"):
        plan_oneshot(model, 0.5, method="wanda")
    with pytest.raises(ValueError, match="data: method 'sparsegpt'"):
        pyprune.plan(model, "sparsegpt", 0.5)
    with pytest.raises(ValueError, match="blocks: the model has no submodule"):
        pyprune.plan(model, "wanda", 0.5, data=data, blocks="nope")
    masked = copy.deepcopy(model)
    pyprune.prune(masked, "wanda", 0.5, data=data, progress=False)
    with pytest.raises(ValueError, match="make_permanent"):
        plan_oneshot(masked, 0.5, method="wanda", data=data, progress=False)


def test_magnitude_without_oneshot_options_is_unchanged() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    plan = pyprune.plan(net, "magnitude", 0.5)
    assert plan.method.startswith("magnitude")
    assert [layer.name for layer in plan.layers] == ["0"]
    nm = pyprune.plan(net, "magnitude", 0.5, n_m=(2, 4))
    removed = ~nm.layer("0").keep_mask((8, 8))
    assert (removed.reshape(8, 2, 4).sum(-1) == 2).all()


def test_semi_structured_export_message_without_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert "sparse tensor cores" in semi_structured_unsupported()
    with pytest.raises(RuntimeError, match="to_semi_structured: no CUDA device"):
        to_semi_structured(_gpt2())


@pytest.mark.slow
def test_readme_snippets_run() -> None:
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    oneshot = next(block for block in blocks if '"wanda"' in block)
    depth = next(block for block in blocks if "pyprune.plan_blocks" in block)
    namespace: dict = {}
    exec(compile(oneshot, "README.md", "exec"), namespace)
    exec(compile(depth, "README.md", "exec"), namespace)
    model = namespace["model"]
    assert model.config.num_hidden_layers == 3
    assert model(namespace["calibration"][0]["input_ids"]).logits.shape == (4, 32, 100)


# ---------------------------------------------------------------- models without blocks: one block, layer by layer


class _SmallCNN(torch.nn.Module):
    """float64 convs (one strided, one grouped) and two Linear layers, on (n, 2, 6, 6) inputs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        nn = torch.nn
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.grouped = nn.Conv2d(4, 4, 3, padding="same", groups=2)
        self.fc1 = nn.Linear(36, 16)
        self.fc2 = nn.Linear(16, 3)
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc2(torch.relu(self.fc1(self.grouped(x).flatten(1))))


def _patches(x: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    """``(N * H_out * W_out, C * kh * kw)`` input patches of ``conv``, gathered offset by offset."""
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    padded = torch.nn.functional.pad(x, [pw, pw, ph, ph])
    h_out = (padded.shape[2] - kh) // sh + 1
    w_out = (padded.shape[3] - kw) // sw + 1
    taps = torch.stack(
        [
            torch.stack(
                [padded[:, :, i : i + sh * h_out : sh, j : j + sw * w_out : sw] for j in range(kw)], -1
            )
            for i in range(kh)
        ],
        -2,
    )  # (N, C, H_out, W_out, kh, kw)
    return taps.permute(0, 2, 3, 1, 4, 5).reshape(-1, x.shape[1] * kh * kw)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_cnn_is_calibrated_layer_by_layer_in_forward_order(method) -> None:
    model = _SmallCNN().eval()
    g = torch.Generator().manual_seed(3)
    data = [(torch.randn(5, 2, 6, 6, generator=g, dtype=torch.float64), torch.zeros(5)) for _ in range(2)]
    plan = pyprune.plan(model, method, 0.5, data=data, progress=False, block_size=8)
    assert [layer.name for layer in plan.layers] == ["conv1", "conv2", "fc1"]
    assert plan.options["blocks"] is None
    assert plan.options["untouched"] == {
        "grouped": "grouped convolution (groups=2): its input statistics differ per group",
        "fc2": "output layer (left out by default)",
    }
    # Reference: each layer's inputs captured by a full forward of the partly pruned copy, conv patches gathered
    # offset by offset, the same solver as the block-wise test.
    solve = (
        _wanda_solve(0.5)
        if method == "wanda"
        else lambda w, x: _obs_reference(w, x.t() @ x, x.shape[0], 0.5, None, 8)
    )
    ref = copy.deepcopy(model)
    for name in ("conv1", "conv2", "fc1"):
        module = ref.get_submodule(name)
        seen = []
        handle = module.register_forward_pre_hook(lambda m, a, seen=seen: seen.append(a[0]))
        with torch.no_grad():
            for x, _ in data:
                ref(x)
        handle.remove()
        rows = [_patches(x, module) if isinstance(module, torch.nn.Conv2d) else x for x in seen]
        mask, new = solve(module.weight.detach().flatten(1), torch.cat(rows))
        assert torch.equal(
            ~plan.layer(name).keep_mask(module.weight.shape), mask.reshape(module.weight.shape)
        )
        if method == "sparsegpt":
            torch.testing.assert_close(
                plan.weights[name], new.reshape(module.weight.shape), rtol=1e-9, atol=1e-12
            )
        with torch.no_grad():
            module.weight.copy_(new.reshape(module.weight.shape))
    pruned = plan.apply(copy.deepcopy(model))
    torch.testing.assert_close(pruned(data[0][0]), ref(data[0][0]), rtol=1e-9, atol=1e-12)


def test_owl_without_blocks_is_refused_naming_the_option() -> None:
    data = [torch.randn(4, 2, 6, 6, dtype=torch.float64)]
    with pytest.raises(ValueError, match="owl: its sparsities are per block and _SmallCNN has no list"):
        pyprune.plan(_SmallCNN(), "wanda", 0.5, data=data, owl=True, progress=False)


class _ReusedConv(torch.nn.Module):
    """A conv called twice per forward, then a Linear: run_layers stops a pass early only after a layer's last call."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.conv = torch.nn.Conv2d(2, 2, 3, padding=1)
        self.fc1 = torch.nn.Linear(72, 8)
        self.fc2 = torch.nn.Linear(8, 3)
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(torch.relu(self.conv(torch.relu(self.conv(x)))).flatten(1))))


def test_layer_called_twice_is_calibrated_on_both_calls() -> None:
    model = _ReusedConv().eval()
    data = [torch.randn(3, 2, 6, 6, dtype=torch.float64) for _ in range(2)]
    plan = pyprune.plan(model, "sparsegpt", 0.5, data=data, progress=False, block_size=8)
    ref = copy.deepcopy(model)
    for name in ("conv", "fc1"):
        module = ref.get_submodule(name)
        seen = []
        handle = module.register_forward_pre_hook(lambda m, a, seen=seen: seen.append(a[0]))
        with torch.no_grad():
            for x in data:
                ref(x)
        handle.remove()
        rows = torch.cat([_patches(x, module) if name == "conv" else x for x in seen])
        assert len(seen) == (4 if name == "conv" else 2)
        mask, new = _obs_reference(
            module.weight.detach().flatten(1), rows.t() @ rows, rows.shape[0], 0.5, None, 8
        )
        assert torch.equal(
            ~plan.layer(name).keep_mask(module.weight.shape), mask.reshape(module.weight.shape)
        )
        torch.testing.assert_close(
            plan.weights[name], new.reshape(module.weight.shape), rtol=1e-9, atol=1e-12
        )
        with torch.no_grad():
            module.weight.copy_(new.reshape(module.weight.shape))
