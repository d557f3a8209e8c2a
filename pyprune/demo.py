"""The similarity demo: train two small CNNs on scikit-learn's 8x8 digits and compare them layer by layer.

Steps: load the 1,797 digits (bundled with scikit-learn, no download), split them 75/25 with a seeded
permutation, train two CNNs from different seeds (model B slightly wider) with Adam on the CPU, report their
test accuracies, then compute the linear-CKA heatmaps A-vs-B and A-vs-A on the test set with
:func:`pyprune.compare_models`. Writes ``similarity_a_vs_b.png``, ``similarity_a_vs_a.png`` and
``results.json`` into the output folder. A few seconds on a laptop CPU (``quick`` halves that).

Run it with ``pyprune demo`` or ``python -m pyprune demo``.
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pyprune.compare import LayerSimilarity, compare_models

LAYERS = ["conv1", "relu1", "conv2", "relu2", "pool", "fc1", "relu3", "fc2"]
"""The layers compared, in execution order (``flatten`` is left out: it equals ``pool`` reshaped)."""

TEST_FRACTION = 0.25
BATCH_SIZE = 64


def make_cnn(width: int) -> nn.Sequential:
    """conv(1->w)-ReLU-conv(w->2w)-ReLU-maxpool-flatten-linear(32w->64)-ReLU-linear(64->10) for 8x8 inputs."""
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, width, 3, padding=1),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(width, 2 * width, 3, padding=1),
            relu2=nn.ReLU(),
            pool=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(2 * width * 4 * 4, 64),
            relu3=nn.ReLU(),
            fc2=nn.Linear(64, 10),
        )
    )


def missing_dependencies() -> list[str]:
    """The demo's optional dependencies that are not installed (import names), empty when all are."""
    return [name for name in ("sklearn", "matplotlib") if importlib.util.find_spec(name) is None]


def load_digits_split(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as float32 images ``(n, 1, 8, 8)`` in [0, 1] and int64 labels ``(n,)``.

    Returns ``(x_train, y_train, x_test, y_test)``: 1,348 / 449 samples, split by a permutation seeded with
    ``seed``.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images).float().div_(16.0).unsqueeze(1)
    y = torch.from_numpy(digits.target).long()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = round(TEST_FRACTION * len(y))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, seed: int) -> float:
    """Train ``model`` in place with Adam (lr 3e-3, batch 64, reshuffled each epoch from ``seed``).

    Returns the mean training loss of the last epoch.
    """
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    total = 0.0
    for _ in range(epochs):
        total = 0.0
        for idx in torch.randperm(len(y), generator=generator).split(BATCH_SIZE):
            optimiser.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            optimiser.step()
            total += loss.item() * len(idx)
    return total / len(y)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y``, in eval mode."""
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).double().mean().item()


def run_demo(
    out_dir: str | Path = "pyprune-demo", *, seed: int = 0, quick: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train two CNNs on the digits, compare them with linear CKA, save heatmaps and numbers.

    Deterministic for a given ``seed`` (global RNG state is saved and restored around the run).

    Args:
        out_dir: folder for the outputs, created if missing.
        seed: seeds the split, model initialisation (model A: ``seed``, model B: ``seed + 1``) and shuffling.
        quick: 2 training epochs instead of 8 (lower accuracy, for tests and smoke runs).
        progress: print what is happening and show progress bars.

    Raises:
        ImportError: scikit-learn or matplotlib is missing (checked before any work).

    Returns:
        A JSON-serialisable dict (also written to ``results.json``): ``seed``, ``epochs``, ``n_train``,
        ``n_test``, ``accuracy`` (``{"model_a": float, "model_b": float}``), ``a_vs_b`` and ``a_vs_a``
        (:meth:`LayerSimilarity.to_dict`), ``seconds`` and ``files`` (``{"a_vs_b_png", "a_vs_a_png",
        "json"}`` paths as str).
    """
    missing = missing_dependencies()
    if missing:
        raise ImportError(f"the demo needs {', '.join(missing)}: pip install pyprune[demo]")
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    epochs = 2 if quick else 8
    say = print if progress else _silent

    say("[1/4] loading scikit-learn's 8x8 digits")
    x_train, y_train, x_test, y_test = load_digits_split(seed)
    with _one_thread():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model_a = make_cnn(16)
            torch.manual_seed(seed + 1)
            model_b = make_cnn(24)
            accuracies = {}
            for step, (key, model) in enumerate((("model_a", model_a), ("model_b", model_b)), start=2):
                n_params = sum(p.numel() for p in model.parameters())
                say(f"[{step}/4] training {key} ({n_params:,} parameters, {epochs} epochs)")
                loss = train(model, x_train, y_train, epochs=epochs, seed=seed + step)
                accuracies[key] = accuracy(model, x_test, y_test)
                say(f"      final training loss {loss:.3f}, test accuracy {accuracies[key]:.1%}")
        say(f"[4/4] linear CKA on the {len(y_test)} test digits")
        a_vs_b = compare_models(model_a, model_b, x_test, layers_a=LAYERS, progress=progress)
        a_vs_a = compare_models(model_a, model_a, x_test, layers_a=LAYERS, progress=progress)
    files = {
        "a_vs_b_png": out / "similarity_a_vs_b.png",
        "a_vs_a_png": out / "similarity_a_vs_a.png",
        "json": out / "results.json",
    }
    _plot(a_vs_b, files["a_vs_b_png"], "model A (16 ch) vs model B (24 ch)", accuracies, "model B")
    _plot(a_vs_a, files["a_vs_a_png"], "model A vs itself", accuracies, "model A")
    result = {
        "seed": seed,
        "epochs": epochs,
        "n_train": len(y_train),
        "n_test": len(y_test),
        "accuracy": accuracies,
        "a_vs_b": a_vs_b.to_dict(),
        "a_vs_a": a_vs_a.to_dict(),
        "seconds": round(time.perf_counter() - start, 2),
        "files": {key: str(path) for key, path in files.items()},
    }
    files["json"].write_text(json.dumps(result, indent=2) + "\n")
    return result


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one thread: batches of 64 8x8 images are too small for intra-op parallelism to pay, and
    with one thread the demo does not slow down several-fold when other processes busy the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _silent(*_: object) -> None:
    """A ``print`` that prints nothing, for ``progress=False``."""


def _plot(
    similarity: LayerSimilarity, path: Path, what: str, accuracies: dict[str, float], columns: str
) -> None:
    title = (
        f"{similarity.metric}: {what}\n"
        f"test accuracy A {accuracies['model_a']:.1%}, B {accuracies['model_b']:.1%}; "
        f"{similarity.n_samples} test digits"
    )
    similarity.plot(path=path, title=title, xlabel=columns)


def format_summary(result: dict[str, Any]) -> str:
    """A short text report of :func:`run_demo`'s result: accuracies, the A-vs-B matrix and the files."""
    a_vs_b = result["a_vs_b"]
    width = max(len(name) for name in a_vs_b["names_a"])
    cell = max(6, *(len(name) for name in a_vs_b["names_b"]))
    lines = [
        f"pyprune demo (seed {result['seed']}, {result['epochs']} epochs, {result['seconds']:.1f} s)",
        f"test accuracy: model A {result['accuracy']['model_a']:.1%}, "
        f"model B {result['accuracy']['model_b']:.1%} ({result['n_test']} test digits)",
        f"{a_vs_b['metric']}, rows model A, columns model B:",
        " " * width + "".join(f" {name:>{cell}}" for name in a_vs_b["names_b"]),
    ]
    for name, row in zip(a_vs_b["names_a"], a_vs_b["values"], strict=True):
        cells = "".join(f" {'nan' if v is None else f'{v:.3f}':>{cell}}" for v in row)
        lines.append(f"{name:<{width}}{cells}")
    lines.append("files:")
    lines += [f"  {path}" for path in result["files"].values()]
    return "\n".join(lines)
