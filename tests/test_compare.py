from __future__ import annotations

import copy
import json
import math
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pyprune.activations import capture
from pyprune.compare import LayerSimilarity, compare_models
from pyprune.similarity.cka import cka_matrix

LAYERS = ["conv", "relu", "fc1", "fc2"]


def make_model(seed: int, width: int = 4) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(1, width, 3, padding=1),
            relu=nn.ReLU(),
            flat=nn.Flatten(),
            fc1=nn.Linear(width * 36, 16),
            act=nn.Tanh(),
            fc2=nn.Linear(16, 5),
        )
    )


@pytest.fixture(scope="module")
def data() -> torch.Tensor:
    return torch.randn(96, 1, 6, 6, generator=torch.Generator().manual_seed(0))


def test_equals_cka_matrix_on_captured_activations(data):
    a, b = make_model(0), make_model(1, width=6)
    result = compare_models(
        a, b, data, layers_a=LAYERS, layers_b=["relu", "fc2"], batch_size=40, progress=False
    )
    expected = cka_matrix(capture(a, data, LAYERS), capture(b, data, ["relu", "fc2"]))
    torch.testing.assert_close(result.values, expected)
    assert result.values.shape == (4, 2)
    assert result.values.dtype == torch.float64
    assert (result.names_a, result.names_b) == (LAYERS, ["relu", "fc2"])
    assert result.metric == "linear CKA"
    assert result.n_samples == 96


def test_rbf_unbiased_and_channel_options_are_passed_on(data):
    a, b = make_model(0), make_model(1)
    options = {"kernel": "rbf", "threshold": 0.8, "unbiased": True, "flatten": "channel"}
    result = compare_models(a, b, data[:40], layers_a=["conv", "relu"], progress=False, **options)
    expected = cka_matrix(
        capture(a, data[:40], ["conv", "relu"]), capture(b, data[:40], ["conv", "relu"]), **options
    )
    torch.testing.assert_close(result.values, expected)
    assert result.metric == "RBF CKA (threshold 0.8, unbiased)"


def test_self_comparison_has_unit_diagonal_and_is_symmetric(data):
    model = make_model(0)
    result = compare_models(model, model, data, layers_a=LAYERS, progress=False)
    torch.testing.assert_close(result.values.diagonal(), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(result.values, result.values.T)
    assert result.names_b == LAYERS


def test_self_comparison_with_other_layers(data):
    model = make_model(0)
    result = compare_models(model, model, data, layers_a=["conv", "fc1"], layers_b=nn.Linear, progress=False)
    assert result.names_b == ["fc1", "fc2"]
    expected = cka_matrix(capture(model, data, ["conv", "fc1"]), capture(model, data, ["fc1", "fc2"]))
    torch.testing.assert_close(result.values, expected)
    assert result.values[1, 0].item() == pytest.approx(1.0)


def test_one_pass_over_one_shot_and_shuffled_data(data):
    # Both models must see the same samples: identical copies then have CKA 1 on the diagonal. Reading a
    # generator twice, or a shuffled loader once per model, would break that.
    a = make_model(0)
    b = copy.deepcopy(a)
    one_shot = (data[i : i + 16] for i in range(0, 96, 16))
    shuffled = DataLoader(TensorDataset(data), batch_size=16, shuffle=True)
    for source in (one_shot, shuffled):
        result = compare_models(a, b, source, layers_a=LAYERS, progress=False)
        torch.testing.assert_close(result.values.diagonal(), torch.ones(4, dtype=torch.float64))
        assert result.n_samples == 96


def test_max_samples(data):
    model = make_model(0)
    result = compare_models(model, make_model(1), data, layers_a=LAYERS, max_samples=50, progress=False)
    expected = cka_matrix(capture(model, data[:50], LAYERS), capture(make_model(1), data[:50], LAYERS))
    torch.testing.assert_close(result.values, expected)
    assert result.n_samples == 50


def test_progress_bar_goes_to_stderr(data, capsys):
    compare_models(make_model(0), make_model(1), data, layers_a=LAYERS, progress=True)
    captured = capsys.readouterr()
    assert "96/96" in captured.err
    assert captured.out == ""


def test_streaming_equals_minibatch_cka_fed_by_hand(data):
    streaming = pytest.importorskip("pyprune.similarity.streaming")
    a, b = make_model(0), make_model(1)
    result = compare_models(a, b, data, layers_a=LAYERS, streaming=True, batch_size=32, progress=False)
    accumulator = streaming.MinibatchCKA()
    for i in range(0, 96, 32):
        accumulator.update(capture(a, data[i : i + 32], LAYERS), capture(b, data[i : i + 32], LAYERS))
    torch.testing.assert_close(result.values, accumulator.compute())
    assert result.metric == "minibatch linear CKA (unbiased)"
    assert result.n_samples == 96


def test_streaming_single_batch_equals_unbiased_cka(data):
    pytest.importorskip("pyprune.similarity.streaming")
    a, b = make_model(0), make_model(1)
    result = compare_models(a, b, data, layers_a=LAYERS, streaming=True, batch_size=96, progress=False)
    expected = cka_matrix(capture(a, data, LAYERS), capture(b, data, LAYERS), unbiased=True)
    torch.testing.assert_close(result.values, expected)


def test_streaming_self_comparison(data):
    pytest.importorskip("pyprune.similarity.streaming")
    model = make_model(0)
    result = compare_models(
        model, model, data, layers_a=LAYERS, streaming=True, batch_size=32, progress=False
    )
    torch.testing.assert_close(result.values.diagonal(), torch.ones(4, dtype=torch.float64))


def test_streaming_is_unbiased_only(data):
    with pytest.raises(ValueError, match="always unbiased"):
        compare_models(make_model(0), make_model(1), data, layers_a=LAYERS, streaming=True, unbiased=False)


def test_empty_data_is_an_error():
    with pytest.raises(ValueError, match="no samples"):
        compare_models(make_model(0), make_model(1), [], layers_a=LAYERS, progress=False)


def test_to_dict_is_strict_json_with_nan_as_none():
    result = LayerSimilarity(
        values=torch.tensor([[1.0, math.nan]], dtype=torch.float64),
        names_a=["x"],
        names_b=["y", "z"],
        metric="linear CKA",
        n_samples=10,
    )
    decoded = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert decoded == {
        "metric": "linear CKA",
        "n_samples": 10,
        "names_a": ["x"],
        "names_b": ["y", "z"],
        "values": [[1.0, None]],
    }
