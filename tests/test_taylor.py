"""Taylor criterion against brute force: per-example gradients from torch.autograd.grad, one example at a time."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyprune.pruning.criteria.taylor import Taylor

N_EXAMPLES = 8


class Net(nn.Module):
    """conv -> BN -> ELU -> strided conv -> ELU -> linear, on (n, 2, 6, 6) inputs.

    One in-place ``ELU`` module is shared by both stages, as torchvision shares ``self.relu``: it overwrites the
    BN output and the conv2 output. ELU, unlike (leaky) ReLU, is not positively homogeneous, so ``z·∂L/∂z``
    differs before and after it, and a product that mixed the overwritten z with the gradient at the hooked
    point would be wrong.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ELU(inplace=True)
        self.conv2 = nn.Conv2d(4, 3, 3, stride=2, padding=1)
        self.fc = nn.Linear(27, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn(self.conv1(x)))
        x = self.act(self.conv2(x))
        return self.fc(x.flatten(1))

    def maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every intermediate map, computed out of place so each stays as it was produced."""
        out = {"conv1": self.conv1(x)}
        out["bn"] = self.bn(out["conv1"])
        out["act1"] = F.elu(out["bn"])
        out["conv2"] = self.conv2(out["act1"])
        out["act2"] = F.elu(out["conv2"])
        out["fc"] = self.fc(out["act2"].flatten(1))
        return out


class TokenNet(nn.Module):
    """A Linear acting on (B, T, I) inputs, then a mean over T and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.proj(x)).mean(1))


@pytest.fixture
def net() -> Net:
    torch.manual_seed(0)
    model = Net().double()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.uniform_(-0.5, 0.5)
    # Eval mode: BatchNorm uses running statistics, so examples do not interact and per-example gradients of a
    # batched pass equal those of single-example passes.
    return model.eval()


@pytest.fixture
def data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(N_EXAMPLES, 2, 6, 6, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 5, (N_EXAMPLES,), generator=generator)
    return x, y


def brute_products(model: Net, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per map: ``(n, C)`` spatial means of ``z · ∂ℓ_b/∂z``, each example on its own."""
    rows: dict[str, list[torch.Tensor]] = {}
    for i in range(x.shape[0]):
        maps = model.maps(x[i : i + 1])
        loss = F.cross_entropy(maps["fc"], y[i : i + 1])
        grads = torch.autograd.grad(loss, list(maps.values()))
        for (name, z), g in zip(maps.items(), grads, strict=True):
            product = (z * g).detach()[0]
            rows.setdefault(name, []).append(product.flatten(1).mean(1) if product.ndim > 1 else product)
    return {name: torch.stack(r) for name, r in rows.items()}


def brute_paper(products: torch.Tensor) -> torch.Tensor:
    return products.abs().mean(0)


def brute_signed(products: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    batch_means = [chunk.mean(0) for chunk in products.split(list(sizes))]
    return torch.stack(batch_means).sum(0).abs() / len(sizes)


def feed(
    taylor: Taylor,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    sizes: tuple[int, ...],
    loss_reduction: str = "mean",
) -> None:
    for xb, yb in zip(x.split(list(sizes)), y.split(list(sizes)), strict=True):
        with taylor.accumulate():
            F.cross_entropy(model(xb), yb, reduction=loss_reduction).backward()


def assert_close64(actual: torch.Tensor, expected: torch.Tensor) -> None:
    # float64 end to end: only summation order differs.
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-14 * float(expected.abs().max()))


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("sizes", [(8,), (3, 1, 4)])
def test_paper_variant_matches_per_example_brute_force(net, data, sizes):
    x, y = data
    expected = brute_products(net, x, y)
    taylor = Taylor(net)
    feed(taylor, net, x, y, sizes)
    assert taylor.layer_names == ["conv1", "conv2", "fc"]
    assert (taylor.num_examples, taylor.num_batches) == (N_EXAMPLES, len(sizes))
    # conv2's own output is overwritten by the in-place ELU after it: the copy taken at the hook keeps it.
    for name in taylor.layer_names:
        assert_close64(taylor.raw_scores(name), brute_paper(expected[name]))


def test_sum_loss_and_the_loss_reduction_option(net, data):
    x, y = data
    expected = brute_paper(brute_products(net, x, y)["conv2"])
    summed = Taylor(net, ["conv2"], loss_reduction="sum")
    feed(summed, net, x, y, (3, 1, 4), loss_reduction="sum")
    assert_close64(summed.raw_scores("conv2"), expected)
    # A mean loss read as a sum leaves the 1/B of the mean in every gradient.
    unscaled = Taylor(net, ["conv2"], loss_reduction="sum")
    feed(unscaled, net, x, y, (4, 4))
    assert_close64(unscaled.raw_scores("conv2"), expected / 4)


def test_signed_variant_matches_brute_force(net, data):
    x, y = data
    sizes = (3, 1, 4)
    expected = brute_products(net, x, y)
    taylor = Taylor(net, reduction="signed_sum_then_abs")
    feed(taylor, net, x, y, sizes)
    for name in taylor.layer_names:
        assert_close64(taylor.raw_scores(name), brute_signed(expected[name], sizes))
    # Signs cancel between examples, so jacobgil/pytorch-pruning's score never exceeds the paper's.
    paper = brute_paper(expected["conv1"])
    assert (taylor.raw_scores("conv1") <= paper + 1e-15).all()
    assert (taylor.raw_scores("conv1") < paper).any()


def test_point_observes_the_chosen_map(net, data):
    x, y = data
    expected = brute_products(net, x, y)
    at_bn = Taylor(net, ["conv1"], point={"conv1": "bn"})
    feed(at_bn, net, x, y, (5, 3))
    # The BN output is overwritten in place by the activation after the hook.
    assert_close64(at_bn.raw_scores("conv1"), brute_paper(expected["bn"]))
    # One shared activation module: each layer takes the call that follows it.
    post = Taylor(net, ["conv1", "conv2"], point={"conv1": "act", "conv2": "act"})
    feed(post, net, x, y, (5, 3))
    assert_close64(post.raw_scores("conv1"), brute_paper(expected["act1"]))
    assert_close64(post.raw_scores("conv2"), brute_paper(expected["act2"]))
    assert not torch.allclose(post.raw_scores("conv1"), brute_paper(expected["bn"]))
    assert "point={'conv1': 'act', 'conv2': 'act'}" in repr(post)


def test_linear_on_token_inputs():
    torch.manual_seed(2)
    model = TokenNet().double()
    x = torch.randn(6, 5, 4, dtype=torch.float64)
    y = torch.randint(0, 2, (6,))
    rows = []
    for i in range(6):
        z = model.proj(x[i : i + 1])
        loss = F.cross_entropy(model.head(torch.tanh(z).mean(1)), y[i : i + 1])
        (g,) = torch.autograd.grad(loss, z)
        rows.append((z * g).detach()[0].mean(0))
    taylor = Taylor(model, ["proj"])
    feed(taylor, model, x, y, (2, 4))
    assert_close64(taylor.raw_scores("proj"), torch.stack(rows).abs().mean(0))
    assert taylor.flops_per_channel("proj") == 5 * (2 * 4 - 1)


def test_scores_are_unit_norm_per_layer(net, data):
    x, y = data
    taylor = Taylor(net)
    feed(taylor, net, x, y, (8,))
    for name in taylor.layer_names:
        scores = taylor.scores(net.get_submodule(name), name)
        assert scores.dtype == torch.float64
        assert_close64(torch.linalg.vector_norm(scores), torch.tensor(1.0, dtype=torch.float64))
        raw = taylor.raw_scores(name)
        assert_close64(scores, raw / raw.norm())
    unnormalised = Taylor(net, normalize=False)
    feed(unnormalised, net, x, y, (8,))
    assert_close64(unnormalised.scores(net.conv1, "conv1"), taylor.raw_scores("conv1"))


def test_zero_gradient_layer_scores_zero_not_nan():
    class Muted(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(3, 2)
            self.muted = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x) + 0 * self.muted(x)

    model = Muted().double()
    taylor = Taylor(model)
    feed(taylor, model, torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 1, 1, 0]), (4,))
    assert torch.equal(taylor.scores(model.muted, "muted"), torch.zeros(2, dtype=torch.float64))


def test_flops_per_channel_hand_formula(net, data):
    x, y = data
    taylor = Taylor(net)
    feed(taylor, net, x, y, (2,) * 4)
    assert taylor.flops_per_channel("conv1") == 2 * 6 * 6 * (2 * 9 + 1)
    assert taylor.flops_per_channel("conv2") == 2 * 3 * 3 * (4 * 9 + 1)  # stride 2: 3x3 output
    assert taylor.flops_per_channel("fc") == 2 * 27 - 1

    grouped = nn.Sequential(
        nn.Conv2d(4, 6, (3, 2), stride=2, groups=2, bias=False), nn.Flatten(), nn.Linear(72, 2)
    )
    volume = Taylor(grouped, ["0"])
    with volume.accumulate():
        grouped(torch.randn(1, 4, 7, 9)).sum().backward()
    # 7x9 input, kernel 3x2, stride 2 -> 3x4 output; 2 input channels per group.
    assert volume.flops_per_channel("0") == 2 * (3 * 4) * (2 * 3 * 2 + 1)


def test_flops_penalty_flips_the_order_as_predicted(net, data):
    x, y = data
    plain = Taylor(net)
    feed(plain, net, x, y, (8,))
    hat1 = plain.scores(net.conv1, "conv1")
    hat2 = plain.scores(net.conv2, "conv2")
    flops1, flops2, unit = 2 * 36 * 19, 2 * 9 * 37, 1e3
    i, j = int(hat1.argmax()), int(hat2.argmin())
    gap = float(hat1[i] - hat2[j])
    assert gap > 0, "test setup: conv1's best map should outrank conv2's worst before the penalty"
    lam = 2 * gap * unit / (flops1 - flops2)
    penalised = Taylor(net, flops_lambda=lam, flops_unit=unit)
    feed(penalised, net, x, y, (8,))
    s1 = penalised.scores(net.conv1, "conv1")
    s2 = penalised.scores(net.conv2, "conv2")
    assert_close64(s1, hat1 - lam * flops1 / unit)
    assert_close64(s2, hat2 - lam * flops2 / unit)
    assert s1[i] < s2[j]
    assert abs(float(s2[j] - s1[i]) - gap) < 1e-12


def test_hooks_removed_also_when_the_body_raises(net, data):
    x, y = data
    taylor = Taylor(net, point={"conv1": "act"})
    feed(taylor, net, x[:2], y[:2], (2,))
    assert no_hooks(net)
    outputs = []

    def failing_body() -> None:
        with taylor.accumulate():
            outputs.append(net(x[:3]))
            assert not no_hooks(net)
            raise KeyError("body")

    with pytest.raises(KeyError, match="body"):
        failing_body()
    assert no_hooks(net)
    # The tensor hooks of that forward are gone too: a late backward adds nothing.
    F.cross_entropy(outputs[0], y[:3]).backward()
    assert (taylor.num_examples, taylor.num_batches) == (2, 1)
    # Blocks do not nest.
    with taylor.accumulate(), pytest.raises(RuntimeError, match="nest"), taylor.accumulate():
        pass
    assert no_hooks(net)


def test_backward_outside_the_block_warns_and_counts_nothing(net, data):
    x, y = data
    taylor = Taylor(net)
    with pytest.warns(UserWarning, match="backward"), taylor.accumulate():
        loss = F.cross_entropy(net(x), y)
    loss.backward()
    assert taylor.num_examples == 0
    with pytest.raises(RuntimeError, match=r"taylor\.accumulate\(\)"):
        taylor.scores(net.conv1, "conv1")
    with taylor.accumulate(), torch.no_grad():
        net(x)  # no gradient expected, so no warning
    assert taylor.flops_per_channel("fc") == 53


def test_accumulate_over_leaves_grads_and_modes_untouched(net, data):
    x, y = data
    grad_w = torch.randn_like(net.conv1.weight)
    net.conv1.weight.grad = grad_w.clone()
    net.fc.bias.grad = torch.ones_like(net.fc.bias)
    loader = [(x[:3], y[:3]), (x[3:4], y[3:4]), (x[4:], y[4:])]
    taylor = Taylor(net).accumulate_over(loader, F.cross_entropy, progress=False)
    assert torch.equal(net.conv1.weight.grad, grad_w)
    assert torch.equal(net.fc.bias.grad, torch.ones_like(net.fc.bias))
    assert net.conv2.weight.grad is None
    assert not any(m.training for m in net.modules())
    assert no_hooks(net)
    expected = brute_products(net, x, y)
    for name in taylor.layer_names:
        assert_close64(taylor.raw_scores(name), brute_paper(expected[name]))
    limited = Taylor(net).accumulate_over(loader, F.cross_entropy, max_batches=2, progress=False)
    assert (limited.num_examples, limited.num_batches) == (4, 2)


def test_accumulate_over_rejects_bad_input(net, data):
    x, y = data
    taylor = Taylor(net)
    with pytest.raises(TypeError, match="loader"):
        taylor.accumulate_over([x], F.cross_entropy, progress=False)
    with pytest.raises(ValueError, match="loss_fn"):
        taylor.accumulate_over([(x, y)], lambda out, t: out, progress=False)
    with pytest.raises(ValueError, match="max_batches"):
        taylor.accumulate_over([(x, y)], F.cross_entropy, max_batches=0)
    with pytest.raises(ValueError, match="no batches"):
        taylor.accumulate_over([], F.cross_entropy, progress=False)
    assert no_hooks(net)


def test_bad_layer_and_point_names(net, data):
    x, y = data
    with pytest.raises(ValueError, match=r"layers.*'conv'.*did you mean.*'conv1'"):
        Taylor(net, ["conv"])
    with pytest.raises(TypeError, match=r"layers: 'bn' is a BatchNorm2d"):
        Taylor(net, ["conv1", "bn"])
    with pytest.raises(ValueError, match=r"point: key 'conv3'.*did you mean"):
        Taylor(net, point={"conv3": "act"})
    with pytest.raises(ValueError, match=r"point\['conv1'\]: 'acts'.*did you mean 'act'"):
        Taylor(net, point={"conv1": "acts"})
    with pytest.raises(ValueError, match="reduction"):
        Taylor(net, reduction="abs")
    with pytest.raises(ValueError, match="flops_unit"):
        Taylor(net, flops_unit=0)
    mismatched = Taylor(net, ["conv1"], point={"conv1": "conv2"})
    with pytest.raises(ValueError, match=r"point: .*'conv2'.*expected 4 channels"), mismatched.accumulate():
        net(x)
    assert no_hooks(net)
    taylor = Taylor(net, ["conv1"])
    feed(taylor, net, x, y, (8,))
    with pytest.raises(ValueError, match=r"name: 'conv2' is not a layer scored"):
        taylor.scores(net.conv2, "conv2")
    with pytest.raises(RuntimeError, match="pruned"):
        taylor.scores(nn.Conv2d(2, 3, 3), "conv1")
    taylor.reset()
    with pytest.raises(RuntimeError, match="no gradient recorded"):
        taylor.raw_scores("conv1")


def test_repr_shows_the_options(net):
    text = repr(Taylor(net, reduction="signed_sum_then_abs", flops_lambda=1e-3))
    assert text.startswith("Taylor(layers=['conv1', 'conv2', 'fc']")
    assert "reduction='signed_sum_then_abs'" in text
    assert "flops_lambda=0.001" in text
    assert "loss_reduction='mean'" in text


# ------------------------------------------------------------------------ attention heads (Michel et al. 2019)


class HeadClassifier(nn.Module):
    """One float64 ``nn.TransformerEncoderLayer`` (width 8, ``heads`` heads) and a classifier over the mean token."""

    def __init__(self, heads: int = 2) -> None:
        super().__init__()
        torch.manual_seed(3)
        layer = nn.TransformerEncoderLayer(8, heads, 16, dropout=0.0, batch_first=True)
        self.parts = nn.ModuleDict({"layer": layer, "head": nn.Linear(8, 3)}).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.parts["head"](self.parts["layer"](x).mean(1))


def head_outputs(model: HeadClassifier, x: torch.Tensor) -> torch.Tensor:
    """``(batch, heads, tokens, head_dim)``: each head's attention output, written out in plain torch."""
    attn = model.parts["layer"].self_attn
    batch, tokens, width = x.shape
    heads, dim = attn.num_heads, width // attn.num_heads
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).split(width, -1)

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(batch, tokens, heads, dim).transpose(1, 2)

    return (split(q) @ split(k).transpose(-2, -1) / dim**0.5).softmax(-1) @ split(v)


def gated_forward(model: HeadClassifier, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """The classifier written out in plain torch, with head h's attention output multiplied by ``gate[h]``."""
    layer, head = model.parts["layer"], model.parts["head"]
    attn = layer.self_attn
    batch, tokens, width = x.shape
    context = head_outputs(model, x) * gate[None, :, None, None]
    attended = F.linear(
        context.transpose(1, 2).reshape(batch, tokens, width), attn.out_proj.weight, attn.out_proj.bias
    )
    h = layer.norm1(x + attended)
    h = layer.norm2(h + layer.linear2(F.relu(layer.linear1(h))))
    return head(h.mean(1))


def test_head_importance_is_the_loss_gradient_of_a_head_gate():
    from pyprune.pruning.attention import expose_unit_inputs, find_units

    model = HeadClassifier().eval()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(N_EXAMPLES, 5, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (N_EXAMPLES,), generator=g)
    ones = torch.ones(2, dtype=torch.float64)
    torch.testing.assert_close(gated_forward(model, x, ones), model(x), rtol=1e-12, atol=1e-12)
    # Reference: per example, d loss / d gate (Michel et al. 2019), |.| averaged over examples; Taylor averages the
    # product over the 5 positions instead of summing it.
    gates = []
    for b in range(N_EXAMPLES):
        gate = ones.clone().requires_grad_()
        F.cross_entropy(gated_forward(model, x[b : b + 1], gate), y[b : b + 1]).backward()
        gates.append(gate.grad)
    expected = torch.stack(gates).abs().mean(0) / 5

    expose_unit_inputs(model)
    (spec,) = find_units(model)
    taylor = Taylor(model)
    assert taylor.unit_names == ["parts.layer.self_attn"]
    feed(taylor, model, x, y, (3, 5))
    assert_close64(taylor.raw_scores(spec.name), expected)
    # Normalised over the 2 x 4 channels the heads span: each head's 4 channels share its θ equally.
    assert spec.unit_width == 4
    assert_close64(taylor.unit_scores(spec), expected / (expected.norm() * 2))
    assert no_hooks(model)


def test_unexposed_multihead_attention_and_flops_penalty_refuse_head_scores():
    from pyprune.pruning.attention import find_units

    model = HeadClassifier().eval()
    x = torch.randn(4, 5, 8, dtype=torch.float64)
    y = torch.zeros(4, dtype=torch.long)
    (spec,) = find_units(model)
    taylor = Taylor(model)
    feed(taylor, model, x, y, (4,))  # nn.MultiheadAttention never calls out_proj as a module
    with pytest.raises(RuntimeError, match=r"no gradient recorded for layer 'parts\.layer\.self_attn'"):
        taylor.unit_scores(spec)
    with pytest.raises(ValueError, match=r"flops_lambda: .*'parts\.layer\.self_attn' is scored by heads"):
        Taylor(model, flops_lambda=1e-3).unit_scores(spec)
    assert Taylor(model, heads=False).unit_scores(spec) is None


def test_global_ranking_puts_heads_and_channels_on_one_scale():
    # By hand: linear1's 16 channels all have θ = 1, so they score 1/sqrt(16) = 0.25. The two heads (width 4)
    # have θ = (1, 3): normalised over the 8 channels they span, each channel carries θ_h / 4 and the shares' norm
    # is sqrt(10) / 2, so the heads score (1, 3) / (2 sqrt(10)) = (0.158, 0.474). Removing one unit of the 18
    # takes head 0. Normalised over the heads alone they would score (0.316, 0.949) and a channel would go first.
    from pyprune.pruning.attention import expose_unit_inputs, find_units
    from pyprune.pruning.selection import plan_structured

    model = HeadClassifier().eval()
    expose_unit_inputs(model)
    taylor = Taylor(model)
    raw = {
        name: torch.ones(model.get_submodule(name).weight.shape[0], dtype=torch.float64)
        for name in taylor.layer_names
    }
    raw["parts.layer.self_attn"] = torch.tensor([1.0, 3.0], dtype=torch.float64)
    taylor.raw_scores = raw.__getitem__  # the accumulated θ are tested against autograd above
    x = torch.randn(1, 5, 8, dtype=torch.float64)
    plan = plan_structured(model, 1 / 18, x, criterion=taylor, scope="global", ignored_layers=["parts.head"])
    assert plan.layer("parts.layer.self_attn").removed.tolist() == [0]
    assert [layer.name for layer in plan.layers if len(layer.removed)] == ["parts.layer.self_attn"]
    assert_close64(
        taylor.unit_scores(find_units(model)[0]),
        torch.tensor([1.0, 3.0], dtype=torch.float64) / (2 * 10**0.5),
    )
    # Three units: head 0, then the two lowest-index channels of linear1 (ties at 0.25 < 0.474).
    plan = plan_structured(model, 3 / 18, x, criterion=taylor, scope="global", ignored_layers=["parts.head"])
    assert plan.layer("parts.layer.self_attn").removed.tolist() == [0]
    assert plan.layer("parts.layer.linear1").removed.tolist() == [0, 1]
