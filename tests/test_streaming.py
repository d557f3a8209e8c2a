from __future__ import annotations

import itertools
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import pyprune
from tests import _references as ref


def _layers(seed: int, n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 12))
    xs = [x, np.maximum(x @ rng.standard_normal((12, 30)), 0)]
    ys = [x @ rng.standard_normal((12, 5)) + rng.standard_normal((n, 5)), rng.standard_normal((n, 2, 3, 3))]
    return xs, ys


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_single_batch_equals_full_unbiased_cka(kernel):
    xs, ys = _layers(0, 50)
    acc = pyprune.MinibatchCKA(kernel=kernel)
    acc.update(xs, ys)
    expected = pyprune.cka_matrix(xs, ys, kernel=kernel, unbiased=True)
    assert torch.allclose(acc.compute(), expected, rtol=1e-12)


@pytest.mark.parametrize("sizes", [[25, 25, 25, 25], [40, 9, 31, 20]])
def test_batches_are_weighted_per_batch(sizes):
    xs, ys = _layers(1, sum(sizes))
    acc = pyprune.MinibatchCKA()
    bounds = np.cumsum([0, *sizes])
    for lo, hi in itertools.pairwise(bounds):
        acc.update([x[lo:hi] for x in xs], [y[lo:hi] for y in ys])
    assert acc.num_batches == len(sizes)
    assert acc.num_samples == sum(sizes)
    expected = np.zeros((2, 2))
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            num = sxx = syy = 0.0
            for lo, hi in itertools.pairwise(bounds):
                k, l = ref.linear_gram(x[lo:hi]), ref.linear_gram(y[lo:hi])
                num += ref.hsic_unbiased(k, l)
                sxx += ref.hsic_unbiased(k, k)
                syy += ref.hsic_unbiased(l, l)
            expected[i, j] = num / np.sqrt(sxx * syy)
    np.testing.assert_allclose(acc.compute().numpy(), expected, rtol=1e-10)


def test_self_comparison_and_dict_names():
    xs, _ = _layers(2, 60)
    acc = pyprune.MinibatchCKA()
    for lo in range(0, 60, 20):
        acc.update({"a": xs[0][lo : lo + 20], "b": xs[1][lo : lo + 20]})
    result = acc.compute()
    assert acc.names_x == ["a", "b"]
    assert torch.allclose(result, result.T)
    assert torch.allclose(result.diagonal(), torch.ones(2, dtype=torch.float64))


def test_small_batch_is_skipped_with_warning(monkeypatch):
    # The warning is given once per process: forget whether an earlier test already triggered it.
    monkeypatch.setattr(pyprune.ops.backend, "_warned", set())
    xs, ys = _layers(3, 43)
    acc = pyprune.MinibatchCKA()
    acc.update([x[:40] for x in xs], [y[:40] for y in ys])
    with pytest.warns(RuntimeWarning, match="skipped"):
        acc.update([x[40:] for x in xs], [y[40:] for y in ys])
    assert acc.num_skipped_samples == 3
    full = pyprune.cka_matrix([x[:40] for x in xs], [y[:40] for y in ys], unbiased=True)
    assert torch.allclose(acc.compute(), full, rtol=1e-12)


def test_layout_changes_are_rejected():
    xs, ys = _layers(4, 20)
    acc = pyprune.MinibatchCKA()
    acc.update(xs, ys)
    with pytest.raises(ValueError, match="xs: expected layers"):
        acc.update(xs[:1], ys)
    with pytest.raises(ValueError, match="on every call or on none"):
        acc.update(xs)
    with pytest.raises(ValueError, match="no batch"):
        pyprune.MinibatchCKA().compute()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _distributed_worker(rank: int, world: int, port: int, result_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        xs, ys = _layers(5, 120)
        acc = pyprune.MinibatchCKA()
        # Rank r sees batches r, r + world, ...: disjoint data, as a DistributedSampler gives.
        for b, lo in enumerate(range(0, 120, 30)):
            if b % world == rank:
                acc.update([x[lo : lo + 30] for x in xs], [y[lo : lo + 30] for y in ys])
        result = acc.compute()
        again = acc.compute()
        assert torch.equal(result, again), "compute() must not double-count on a second call"
        if rank == 0:
            torch.save(result, result_path)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_gloo_two_processes_equals_single_process(tmp_path):
    result_path = str(tmp_path / "result.pt")
    mp.spawn(_distributed_worker, args=(2, _free_port(), result_path), nprocs=2, join=True)
    xs, ys = _layers(5, 120)
    acc = pyprune.MinibatchCKA()
    for lo in range(0, 120, 30):
        acc.update([x[lo : lo + 30] for x in xs], [y[lo : lo + 30] for y in ys])
    assert torch.allclose(torch.load(result_path), acc.compute(), rtol=1e-12)
