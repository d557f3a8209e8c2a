"""cka_matrix_models: every block against the textbook float64 CKA, and its grid plot."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pyprune
from tests import _references as ref


@pytest.fixture(scope="module")
def models() -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((30, 4))
    out = {}
    for m, layers in (("a", 3), ("b", 2), ("c", 3)):
        out[m] = {
            f"l{k}": base @ rng.standard_normal((4, 3 + k)) + rng.standard_normal((30, 3 + k))
            for k in range(layers)
        }
    return out


@pytest.mark.parametrize("options", [{}, {"kernel": "rbf", "threshold": 0.7}, {"unbiased": True}])
def test_every_block_matches_reference(models, options):
    result = pyprune.cka_matrix_models(models, **options)
    kernel, threshold = options.get("kernel", "linear"), options.get("threshold", 0.5)
    unbiased = options.get("unbiased", False)
    assert result.values.shape == (8, 8)
    for a, acts_a in models.items():
        for b, acts_b in models.items():
            expected = [
                [ref.cka(x, y, kernel, threshold, unbiased) for y in acts_b.values()] for x in acts_a.values()
            ]
            np.testing.assert_allclose(result.block(a, b).numpy(), expected, rtol=1e-9, atol=1e-12)
    assert result.offsets == [0, 3, 5, 8]
    torch.testing.assert_close(result.block(0, 2), result.block("a", "c"))


def test_corresponding_layers_and_errors(models):
    same = {m: models[m] for m in ("a", "c")}
    result = pyprune.cka_matrix_models([same["a"], same["c"]])
    summary = result.corresponding_layers()
    expected = np.mean([ref.cka(same["a"][k], same["c"][k]) for k in same["a"]])
    assert summary[0, 1] == pytest.approx(expected, rel=1e-9)
    assert summary[0, 0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="equal layer counts"):
        pyprune.cka_matrix_models(models).corresponding_layers()
    with pytest.raises(KeyError, match="unknown model 'z'"):
        pyprune.cka_matrix_models(models).block("z", "a")
    with pytest.raises(ValueError, match="same number of samples"):
        pyprune.cka_matrix_models([models["a"], {"x": np.ones((29, 2))}])
    with pytest.raises(TypeError, match="models: expected a list or dict"):
        pyprune.cka_matrix_models(np.ones((3, 3)))
    with pytest.raises(ValueError, match="at least one model"):
        pyprune.cka_matrix_models([])


def test_plot_draws_the_grid(models, tmp_path):
    pytest.importorskip("matplotlib")
    fig = pyprune.cka_matrix_models(models).plot(tmp_path / "grid.png")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()][:4] == ["a/l0", "a/l1", "a/l2", "b/l0"]
    assert len(ax.lines) == 4  # two separators, horizontal and vertical each
    assert (tmp_path / "grid.png").stat().st_size > 0
