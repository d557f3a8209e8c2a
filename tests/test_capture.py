from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pyprune.activations import capture, iterate_activations


class Boom(nn.Module):
    """Raises in forward, after the layers before it have run."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


class ModeProbe(nn.Module):
    """Identity that remembers the training flag and grad mode it ran under, and how many samples it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bool, bool]] = []
        self.samples = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((self.training, torch.is_grad_enabled()))
        self.samples += x.shape[0]
        return x


class PairOutput(nn.Module):
    """Returns a tuple, like nn.LSTM or nn.MultiheadAttention."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return 2 * x, torch.zeros(())


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            probe=ModeProbe(),
            conv=nn.Conv2d(1, 4, 3, padding=1),
            bn=nn.BatchNorm2d(4),
            relu=nn.ReLU(),
            pool=nn.AdaptiveAvgPool2d(2),
            flat=nn.Flatten(),
            drop=nn.Dropout(0.5),
            fc=nn.Linear(16, 3),
        )
    )


def inputs(n: int = 10) -> torch.Tensor:
    return torch.randn(n, 1, 6, 6, generator=torch.Generator().manual_seed(1))


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_activations_are_eval_mode_outputs_without_grad():
    model = make_model().train()
    x = inputs()
    acts = capture(model, x, ["conv", "fc"])
    model.eval()
    with torch.no_grad():
        expected_fc = model(x)
        expected_conv = model.conv(x)
    assert list(acts) == ["conv", "fc"]
    torch.testing.assert_close(acts["conv"], expected_conv)
    # Dropout and BatchNorm make a train-mode forward differ from this.
    torch.testing.assert_close(acts["fc"], expected_fc)
    assert not acts["fc"].requires_grad
    assert torch.is_grad_enabled()


def test_training_flags_restored_and_eval_during_forward():
    model = make_model().train()
    model.bn.eval()  # a mixed state must come back exactly, not as model.train()
    before = [m.training for m in model.modules()]
    capture(model, inputs(), ["fc"])
    assert [m.training for m in model.modules()] == before
    assert model.probe.seen == [(False, False)]


def test_hooks_removed_after_success():
    model = make_model()
    capture(model, inputs(), nn.Module)
    assert hook_count(model) == 0


def test_hooks_removed_and_flags_restored_when_forward_raises():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), Boom()).train()
    with pytest.raises(RuntimeError, match="boom"):
        capture(model, torch.randn(4, 3), ["0", "1"])
    assert hook_count(model) == 0
    assert all(m.training for m in model.modules())


def test_names_keep_given_order():
    acts = capture(make_model(), inputs(), ["fc", "conv", "pool"])
    assert list(acts) == ["fc", "conv", "pool"]
    assert acts["pool"].shape == (10, 4, 2, 2)


def test_single_name_string():
    assert list(capture(make_model(), inputs(), "relu")) == ["relu"]


def test_predicate_selects_in_module_order():
    acts = capture(make_model(), inputs(), lambda name, module: name in {"fc", "relu"})
    assert list(acts) == ["relu", "fc"]


def test_types_select_in_module_order():
    model = make_model()
    assert list(capture(model, inputs(), nn.Conv2d)) == ["conv"]
    assert list(capture(model, inputs(), (nn.Linear, nn.Conv2d))) == ["conv", "fc"]


def test_unknown_names_error_suggests_close_names():
    with pytest.raises(ValueError, match="unknown module name") as info:
        capture(make_model(), inputs(), ["conv", "convv", "fcc", "zzzzzz"])
    message = str(info.value)
    assert "'convv' (did you mean 'conv'" in message
    assert "'fcc' (did you mean 'fc'" in message
    assert "'zzzzzz'" in message


def test_no_matching_layer_is_an_error():
    with pytest.raises(ValueError, match="no module of Sequential of type LSTM"):
        capture(make_model(), inputs(), nn.LSTM)
    with pytest.raises(ValueError, match="matching the predicate"):
        capture(make_model(), inputs(), lambda name, module: False)


def test_bad_layer_arguments():
    model = make_model()
    with pytest.raises(ValueError, match="once"):
        capture(model, inputs(), ["fc", "fc"])
    with pytest.raises(TypeError, match="pass its name"):
        capture(model, inputs(), model.fc)
    with pytest.raises(TypeError, match="module names"):
        capture(model, inputs(), [1, 2])


def test_max_samples_truncates_tensor_and_loader():
    model = make_model()
    x = inputs(10)
    full = capture(model, x, ["fc"])["fc"]
    cut = capture(model, x, ["fc"], batch_size=4, max_samples=7)["fc"]
    torch.testing.assert_close(cut, full[:7])
    model.probe.samples = 0
    loader = DataLoader(TensorDataset(x), batch_size=4)
    cut = capture(model, loader, ["fc"], max_samples=6)["fc"]
    torch.testing.assert_close(cut, full[:6])
    assert model.probe.samples == 6  # the last batch is cut before the forward pass, not after


def test_dataloader_and_tensor_give_the_same_activations():
    model = make_model()
    x = inputs(23)
    from_tensor = capture(model, x, ["conv", "fc"])
    loader = DataLoader(TensorDataset(x, torch.arange(23)), batch_size=5, shuffle=False)
    from_loader = capture(model, loader, ["conv", "fc"])
    for name in from_tensor:
        torch.testing.assert_close(from_loader[name], from_tensor[name], rtol=1e-5, atol=1e-6)


def test_tuple_list_dict_and_numpy_batches():
    model = make_model()
    x = inputs(8)
    expected = capture(model, x, ["fc"])["fc"]
    batches = {
        "tuples": [(x[:5], 0), (x[5:], 1)],
        "lists": [[x[:3], "a"], [x[3:], "b"]],
        "dicts": [{"label": 0, "x": x[:4]}, {"input": x[4:]}],
        "numpy": x.numpy(),
    }
    for kind, data in batches.items():
        torch.testing.assert_close(
            capture(model, data, ["fc"])["fc"], expected, rtol=1e-5, atol=1e-6, msg=kind
        )
    # A dict without an x/input/inputs entry is fed as keyword arguments (Hugging Face style): this model has none.
    with pytest.raises(TypeError, match="'image'"):
        capture(model, [{"image": x}], ["fc"])


def test_tuple_output_takes_first_tensor():
    model = nn.Sequential(nn.Linear(3, 2), PairOutput())
    x = torch.randn(5, 3)
    acts = capture(model, x, ["1"])
    torch.testing.assert_close(acts["1"], 2 * model[0](x).detach())


def test_output_is_a_copy_safe_from_later_inplace_ops():
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(inplace=True))
    x = torch.randn(20, 3, generator=torch.Generator().manual_seed(0))
    acts = capture(model, x, ["0", "1"])
    torch.testing.assert_close(acts["0"], model[0](x).detach())
    assert (acts["0"] < 0).any()
    assert (acts["1"] >= 0).all()


def test_module_run_twice_is_an_error():
    relu = nn.ReLU()
    model = nn.Sequential(nn.Linear(3, 3), relu, nn.Linear(3, 3), relu)
    with pytest.raises(ValueError, match="more than once"):
        capture(model, torch.randn(4, 3), ["1"])
    assert hook_count(model) == 0


class SkipsALayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(3, 3)
        self.unused = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


def test_module_never_run_is_an_error():
    model = SkipsALayer()
    with pytest.raises(ValueError, match="never called"):
        capture(model, torch.randn(4, 3), ["unused"])


def test_empty_data_is_an_error():
    with pytest.raises(ValueError, match="no samples"):
        capture(make_model(), [], ["fc"])


def test_flatten_option():
    model = make_model()
    x = inputs(6)
    assert capture(model, x, ["conv"], flatten="example")["conv"].shape == (6, 4 * 6 * 6)
    channel = capture(model, x, ["conv"], flatten="channel")["conv"]
    raw = capture(model, x, ["conv"])["conv"]
    torch.testing.assert_close(channel, raw.permute(0, 2, 3, 1).reshape(-1, 4))
    with pytest.raises(ValueError, match="flatten"):
        capture(model, x, ["conv"], flatten="pixel")


def test_iterate_activations_leaves_model_untouched_between_batches():
    model = make_model().train()
    stream = iterate_activations(model, inputs(10), ["conv", "fc"], batch_size=4)
    first = next(stream)
    assert {name: t.shape[0] for name, t in first.items()} == {"conv": 4, "fc": 4}
    assert hook_count(model) == 0
    assert model.training
    rest = list(stream)
    assert [batch["fc"].shape[0] for batch in rest] == [4, 2]
    full = capture(model, inputs(10), ["fc"])["fc"]
    torch.testing.assert_close(torch.cat([first["fc"]] + [b["fc"] for b in rest]), full)


def test_iterate_activations_checks_arguments_before_iterating():
    with pytest.raises(ValueError, match="unknown module name"):
        iterate_activations(make_model(), inputs(), ["nope"])
    with pytest.raises(ValueError, match="max_samples"):
        iterate_activations(make_model(), inputs(), ["fc"], max_samples=0)


def test_iterate_activations_exception_mid_stream():
    model = nn.Sequential(nn.Linear(3, 3), Boom())

    def batches():
        yield torch.randn(2, 3)

    stream = iterate_activations(model, batches(), ["0"])
    with pytest.raises(RuntimeError, match="boom"):
        next(stream)
    assert hook_count(model) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_inputs_follow_model_device_and_outputs_to_cpu():
    model = nn.Sequential(nn.Linear(3, 3)).cuda()
    x = torch.randn(5, 3, dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    assert capture(model, x, ["0"])["0"].device.type == "cpu"
    assert capture(model, x, ["0"], to_cpu=False)["0"].device.type == "cuda"


def test_parameterless_model_runs_on_cpu():
    acts = capture(nn.Sequential(nn.ReLU()), np.ones((3, 2), dtype=np.float32), ["0"])
    assert acts["0"].shape == (3, 2)


def test_capture_refuses_a_batch_without_rows():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    with pytest.raises(ValueError, match="data: contains no samples"):
        capture(model, torch.zeros(0, 3), ["0"])
