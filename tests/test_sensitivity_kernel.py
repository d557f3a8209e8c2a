"""The sensitivity kernels (``pyprune._C.sensitivity_update``, ``pyprune.ops.cuda.sensitivity_update_cuda``) against
the plain-torch reference ``sensitivity_update_reference`` and a brute-force float64 evaluation of the definition.

float64: the kernels agree with both to 1e-12 (the values are relative contributions in [0, 1]; the kernels
multiply by 1/z instead of dividing and sum the positions in another order). float32: the kernel's error against a
float64 reference on the same inputs must stay within a small factor of the float32 reference's own error. Results
do not depend on the thread count (maxima are exact, and each example's sum over positions is taken in a fixed
order). Bad arguments raise the same exception with the same message on every backend. The CUDA tests at the end
skip without CuPy and a GPU.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from pyprune import _C
from pyprune.ops import cuda as _cuda
from pyprune.ops import sensitivity as ops
from pyprune.ops.backend import use_backend
from pyprune.ops.checks import (
    NEGATIVE_INPUTS_MESSAGE,
    check_kernel_arguments,
    check_sensitivity_arguments,
    window_positions,
)
from pyprune.ops.sensitivity import (
    EPSILON,
    Geometry,
    denominators,
    sensitivity_update,
    sensitivity_update_reference,
)
from pyprune.pruning.criteria.provable.tracker import SensitivityTracker

TIGHT = 1e-12  # float64
FLOAT32_FACTOR = 4.0  # float32: at most this times the float32 reference's error (plus FLOAT32_ATOL)
FLOAT32_ATOL = 1e-6

# (name, geometry, filters, input shape without the batch)
LAYERS = [
    ("linear", Geometry(), 5, (7,)),
    ("conv3x3", Geometry((3, 3), (1, 1), (1, 1), (1, 1)), 4, (2, 6, 5)),
    ("conv-odd", Geometry((3, 2), (2, 1), (1, 0), (1, 2)), 3, (2, 7, 8)),
    ("conv-wide", Geometry((1, 5), (1, 3), (0, 2), (2, 1)), 6, (3, 4, 11)),
    ("conv-2x2-s2", Geometry((2, 2), (2, 2), (0, 0), (1, 1)), 2, (3, 6, 6)),
    ("conv1x1", Geometry((1, 1), (1, 1), (0, 0), (1, 1)), 7, (5, 3, 2)),
]
IDS = [name for name, *_ in LAYERS]


# --------------------------------------------------------------------------------------------------------------
# Inputs


def columns(geometry: Geometry, shape: tuple[int, ...]) -> int:
    return shape[0] if geometry.is_linear else shape[0] * geometry.kernel_size[0] * geometry.kernel_size[1]


def make_case(
    geometry: Geometry,
    filters: int,
    shape: tuple[int, ...],
    batch: int,
    seed: int,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
):
    """(weight, inputs): ~20% zero weights and a dead filter 0; ReLU-like inputs with an all-zero example 1."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(filters, columns(geometry, shape), generator=gen, dtype=torch.float64)
    weight[torch.rand(weight.shape, generator=gen) < 0.2] = 0.0
    weight[0] = 0.0
    inputs = torch.randn(batch, *shape, generator=gen, dtype=torch.float64).clamp_min(0)
    if batch > 1:
        inputs[1] = 0.0
    return weight.to(device, dtype), inputs.to(device, dtype)


def initial_state(weight: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Running maxima from an earlier batch: mostly 0, some entries up to 0.3."""
    gen = torch.Generator().manual_seed(seed + 99)
    out = []
    for _ in range(2):
        s = torch.rand(weight.shape, generator=gen, dtype=torch.float64) * 0.3
        s[torch.rand(weight.shape, generator=gen) < 0.8] = 0.0
        out.append(s.to(weight.device, weight.dtype))
    return out[0], out[1]


def brute_force(
    weight: torch.Tensor, inputs: torch.Tensor, geometry: Geometry
) -> tuple[np.ndarray, np.ndarray]:
    """``max_x mean_p g`` and ``max_x max_p g`` (F, J) in float64 straight from the definition: the patches by
    explicit window loops (not ``unfold``), ``z`` by ``einsum``, ``g = W A / z`` per weight."""
    w = weight.double().cpu().numpy()
    x = inputs.double().cpu().numpy()
    filters, num_columns = w.shape
    if geometry.is_linear:
        cols = x[:, :, None]
    else:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (
            geometry.kernel_size,
            geometry.stride,
            geometry.padding,
            geometry.dilation,
        )
        batch, channels, height, width = x.shape
        out_h = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        out_w = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        cols = np.zeros((batch, num_columns, out_h * out_w))
        for c in range(channels):
            for u in range(kh):
                for v in range(kw):
                    j = (c * kh + u) * kw + v
                    for oh in range(out_h):
                        for ow in range(out_w):
                            ih, iw = oh * sh - ph + u * dh, ow * sw - pw + v * dw
                            if 0 <= ih < height and 0 <= iw < width:
                                cols[:, j, oh * out_w + ow] = x[:, c, ih, iw]
    z_pos = np.einsum("fj,bjp->bfp", np.maximum(w, 0), cols)
    z_neg = np.einsum("fj,bjp->bfp", np.minimum(w, 0), cols)
    mean, peak = np.zeros((filters, num_columns)), np.zeros((filters, num_columns))
    for f in range(filters):
        for j in range(num_columns):
            if w[f, j] == 0:
                continue
            z = z_pos[:, f] if w[f, j] > 0 else z_neg[:, f]
            small = np.abs(z) <= EPSILON
            g = np.where(small, 0.0, w[f, j] * cols[:, j] / np.where(small, 1.0, z))
            mean[f, j] = g.mean(axis=1).max()
            peak[f, j] = g.max()
    return mean, peak


def run(impl: str, weight, inputs, geometry, s_mean, s_max, threads: int = 2) -> None:
    """One update of (s_mean, s_max) in place by one implementation."""
    if impl == "cpu":
        z = denominators(weight, inputs, geometry)
        pairs = (geometry.kernel_size, geometry.stride, geometry.padding, geometry.dilation)
        _C.sensitivity_update(
            weight.numpy(), inputs.numpy(), z.numpy(), s_mean.numpy(), s_max.numpy(), *pairs, threads
        )
    elif impl == "cuda":
        _cuda.sensitivity_update_cuda(
            weight, inputs, geometry, denominators(weight, inputs, geometry), s_mean, s_max
        )
    elif impl == "reference":
        sensitivity_update_reference(weight, inputs, geometry, s_mean, s_max)
    elif impl == "dispatch":
        sensitivity_update(weight, inputs, geometry, s_mean, s_max)
    else:
        raise ValueError(impl)


def updated(impl: str, weight, inputs, geometry, state, threads: int = 2):
    s_mean, s_max = (s.clone() for s in state)
    run(impl, weight, inputs, geometry, s_mean, s_max, threads)
    return s_mean, s_max


def assert_float32_close(got, reference, truth, what: str) -> None:
    """float32 results against float64 truth: within a small factor of the float32 reference's own error. Each
    argument is a tensor or a sequence of tensors (s_mean, s_max)."""
    if isinstance(got, torch.Tensor):
        got, reference, truth = [got], [reference], [truth]
    for k, (g, r, t) in enumerate(zip(got, reference, truth, strict=True)):
        err = float((g.double().cpu() - t.cpu()).abs().max())
        ref_err = float((r.double().cpu() - t.cpu()).abs().max())
        assert err <= FLOAT32_FACTOR * ref_err + FLOAT32_ATOL, (
            f"{what} [{k}]: {err:.3g} vs reference {ref_err:.3g}"
        )


# --------------------------------------------------------------------------------------------------------------
# Against the definition and the reference


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize(("name", "geometry", "filters", "shape"), LAYERS, ids=IDS)
def test_kernel_and_reference_match_brute_force(name, geometry, filters, shape, threads):
    weight, inputs = make_case(geometry, filters, shape, batch=3, seed=len(name))
    mean, peak = brute_force(weight, inputs, geometry)
    zeros = (torch.zeros_like(weight), torch.zeros_like(weight))
    for impl in ("cpu", "reference"):
        s_mean, s_max = updated(impl, weight, inputs, geometry, zeros, threads)
        np.testing.assert_allclose(s_mean.numpy(), mean, rtol=0, atol=TIGHT, err_msg=f"{impl} mean")
        np.testing.assert_allclose(s_max.numpy(), peak, rtol=0, atol=TIGHT, err_msg=f"{impl} max")
    assert peak.max() > 0.1  # the case is not degenerate
    assert (peak[0] == 0).all()  # dead filter


@pytest.mark.parametrize("batch", [1, 17, 40])
@pytest.mark.parametrize(("name", "geometry", "filters", "shape"), LAYERS, ids=IDS)
def test_kernel_matches_reference_float64(name, geometry, filters, shape, batch):
    weight, inputs = make_case(geometry, filters, shape, batch, seed=batch)
    state = initial_state(weight, batch)
    want = updated("reference", weight, inputs, geometry, state)
    for threads in (1, 2, 3):
        got = updated("cpu", weight, inputs, geometry, state, threads)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=0, atol=TIGHT)


@pytest.mark.parametrize("batch", [5, 33])
@pytest.mark.parametrize(("name", "geometry", "filters", "shape"), LAYERS, ids=IDS)
def test_kernel_matches_reference_float32(name, geometry, filters, shape, batch):
    weight, inputs = make_case(geometry, filters, shape, batch, seed=batch, dtype=torch.float32)
    state = initial_state(weight, batch)
    want64 = updated("reference", weight.double(), inputs.double(), geometry, [s.double() for s in state])
    reference = updated("reference", weight, inputs, geometry, state)
    got = updated("cpu", weight, inputs, geometry, state)
    assert got[0].dtype == torch.float32
    assert_float32_close(got, reference, want64, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_larger_layers_use_every_tile_path(dtype):
    # Several filter and column tiles, more positions than one chunk, batches that end in a partial block, and a
    # 4096-column Linear; one thread and many threads (example ranges split across tasks).
    cases = [
        (Geometry((3, 3), (1, 1), (1, 1), (1, 1)), 37, (30, 13, 12), 19),
        (Geometry((3, 3), (2, 2), (1, 1), (1, 1)), 20, (3, 33, 9), 9),
        (Geometry(), 21, (300,), 70),
        (Geometry(), 3, (4096,), 2),
    ]
    for geometry, filters, shape, batch in cases:
        weight, inputs = make_case(geometry, filters, shape, batch, seed=filters, dtype=dtype)
        state = initial_state(weight, filters)
        want = updated("reference", weight, inputs, geometry, state)
        one = updated("cpu", weight, inputs, geometry, state, threads=1)
        for threads in (2, 5):
            got = updated("cpu", weight, inputs, geometry, state, threads)
            assert torch.equal(got[0], one[0])
            assert torch.equal(got[1], one[1])
        if dtype == torch.float64:
            for g, w in zip(one, want, strict=True):
                torch.testing.assert_close(g, w, rtol=0, atol=TIGHT)
        else:
            want64 = updated(
                "reference", weight.double(), inputs.double(), geometry, [s.double() for s in state]
            )
            assert_float32_close(one, want, want64, str(shape))


@settings(max_examples=30, deadline=None)
@given(
    filters=st.integers(1, 11),
    num_columns=st.integers(1, 300),
    batch=st.integers(32, 90),
    zero_fraction=st.sampled_from([0.0, 0.5, 0.95]),
    threads=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_large_linear_batches_match_reference(filters, num_columns, batch, zero_fraction, threads, seed):
    # One lane per example (a Linear batch of at least 4 vectors of examples): the kernel groups each tile's columns
    # by the signs of 4 filters' weights (zero, positive, negative), with short groups, short filter groups and
    # column tiles of every size; float64 against the reference, float32 against the float64 truth.
    geometry = Geometry()
    weight, inputs = make_case(geometry, filters, (num_columns,), batch, seed)
    gen = torch.Generator().manual_seed(seed)
    weight[torch.rand(weight.shape, generator=gen, dtype=torch.float64) < zero_fraction] = 0.0
    state = initial_state(weight, seed)
    want = updated("reference", weight, inputs, geometry, state)
    got = updated("cpu", weight, inputs, geometry, state, threads)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=TIGHT)
    state32 = [s.float() for s in state]
    got32 = updated("cpu", weight.float(), inputs.float(), geometry, state32, threads)
    reference32 = updated("reference", weight.float(), inputs.float(), geometry, state32)
    truth = updated("reference", weight.float().double(), inputs.float().double(), geometry, state)
    assert_float32_close(got32, reference32, truth, "float32")


# Example scales far from 1, down to denominators below the smallest normal number of the dtype.
EXAMPLE_SCALES = {
    torch.float32: [1e-40, 1.0, 3e-9, 1e25, 0.0, 7.5],
    torch.float64: [1e-310, 1.0, 3e-9, 1e200, 0.0, 7.5],
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("geometry", "filters", "shape", "batch"),
    [
        (Geometry(), 6, (37,), 6),  # one lane per filter
        (Geometry(), 6, (37,), 70),  # one lane per example
        (Geometry((3, 3), (2, 1), (1, 1), (1, 2)), 5, (2, 9, 8), 6),
    ],
    ids=["linear-small", "linear-large", "conv"],
)
def test_relative_threshold_is_the_scaled_kernel_bit_for_bit(dtype, geometry, filters, shape, batch):
    # relative_threshold=True scales each example where the kernel reads it: the same bits as the kernel given the
    # inputs and z divided by denominator_scale (as the CUDA path and the reference do), for any scale.
    weight, inputs = make_case(geometry, filters, shape, batch, seed=batch, dtype=dtype)
    scales = torch.tensor(EXAMPLE_SCALES[dtype], dtype=torch.float64).repeat(batch)[:batch]
    inputs = (inputs.double() * scales.view(-1, *[1] * len(shape))).to(dtype)
    z = denominators(weight, inputs, geometry)
    scale = ops.denominator_scale(z)
    assert (scale != 1).sum() >= 3
    state = initial_state(weight, batch)
    pairs = (geometry.kernel_size, geometry.stride, geometry.padding, geometry.dilation)
    want = [s.clone() for s in state]
    scaled_inputs = (inputs / scale.view(-1, *[1] * len(shape))).contiguous()
    _C.sensitivity_update(
        weight.numpy(),
        scaled_inputs.numpy(),
        (z / scale.view(-1, 1, 1, 1)).numpy(),
        *[s.numpy() for s in want],
        *pairs,
        2,
    )
    got = [s.clone() for s in state]
    _C.sensitivity_update(
        weight.numpy(),
        inputs.numpy(),
        z.numpy(),
        *[s.numpy() for s in got],
        *pairs,
        2,
        relative_threshold=True,
    )
    assert torch.equal(got[0], want[0])
    assert torch.equal(got[1], want[1])
    assert float(want[1].max()) > 0.1
    dispatched = [s.clone() for s in state]
    sensitivity_update(weight, inputs, geometry, *dispatched)
    assert torch.equal(dispatched[0], want[0])
    assert torch.equal(dispatched[1], want[1])


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_a_kept_split_changes_nothing(backend):
    geometry = Geometry((3, 3), (1, 1), (1, 1), (1, 1))
    weight, inputs = make_case(geometry, 4, (2, 6, 5), batch=7, seed=6)
    state = initial_state(weight, 6)
    with use_backend(backend):
        want = updated("dispatch", weight, inputs, geometry, state)
        split = ops.split_weight(weight)
        torch.testing.assert_close(
            split, torch.cat([weight.clamp_min(0), weight.clamp_max(0)]), rtol=0, atol=0
        )
        got = [s.clone() for s in state]
        sensitivity_update(weight, inputs, geometry, *got, split=split)
        assert torch.equal(got[0], want[0])
        assert torch.equal(got[1], want[1])
        s_mean, s_max = (s.clone() for s in state)
        with pytest.raises(
            ValueError, match=r"^split: expected shape \(8, 18\) \(\[W\+; W-\] of the weight\)"
        ):
            sensitivity_update(weight, inputs, geometry, s_mean, s_max, split=split[:4])
        with pytest.raises(TypeError, match=r"^split: expected float64, got float32$"):
            sensitivity_update(weight, inputs, geometry, s_mean, s_max, split=split.float())
        with pytest.raises(ValueError, match=r"^split: must be contiguous$"):
            sensitivity_update(weight, inputs, geometry, s_mean, s_max, split=split.T.contiguous().T)
        assert torch.equal(s_mean, state[0])
        assert torch.equal(s_max, state[1])


def test_tracker_names_the_layer_whose_input_is_not_finite():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double()
    with torch.no_grad():
        model[0].weight.fill_(1e308)  # the second layer's inputs overflow to inf
    images = torch.ones(2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^layer '2': inputs: contains NaN or inf$"):
        SensitivityTracker(model).accumulate_over(images, progress=False)
    images[0, 1] = float("nan")
    with pytest.raises(ValueError, match=r"^layer '0': inputs: contains NaN or inf$"):
        SensitivityTracker(model).accumulate_over(images, progress=False)


@settings(max_examples=60, deadline=None)
@given(
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    size=st.tuples(st.integers(1, 3), st.integers(1, 7), st.integers(1, 7)),
    filters=st.integers(1, 5),
    batch=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
)
def test_kernel_matches_reference_on_random_windows(
    kernel, stride, padding, dilation, size, filters, batch, seed
):
    geometry = Geometry(kernel, stride, padding, dilation)
    out = [window_positions(size[1 + a], kernel[a], stride[a], padding[a], dilation[a]) for a in (0, 1)]
    assume(min(out) >= 1)
    weight, inputs = make_case(geometry, filters, size, batch, seed)
    state = initial_state(weight, seed)
    want = updated("reference", weight, inputs, geometry, state)
    got = updated("cpu", weight, inputs, geometry, state, threads=2)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=TIGHT)


# --------------------------------------------------------------------------------------------------------------
# Semantics: zeros, running maxima, blocks, layouts


@pytest.mark.parametrize(("name", "geometry", "filters", "shape"), LAYERS[:3], ids=IDS[:3])
def test_zero_weights_and_zero_inputs_contribute_nothing(name, geometry, filters, shape):
    weight, inputs = make_case(geometry, filters, shape, batch=4, seed=3)
    negative = (torch.full_like(weight, -1.0), torch.full_like(weight, -2.0))
    for impl in ("cpu", "dispatch", "reference"):
        # All-zero inputs: every denominator is 0 (|z| <= eps), so every contribution is 0; the maxima become 0.
        s_mean, s_max = updated(impl, weight, torch.zeros_like(inputs), geometry, negative)
        assert (s_mean == 0).all()
        assert (s_max == 0).all()
        # All-zero weights: same.
        s_mean, s_max = updated(impl, torch.zeros_like(weight), inputs, geometry, negative)
        assert (s_mean == 0).all()
        assert (s_max == 0).all()
        # A single nonzero weight per filter carries everything: its contribution is exactly 1 wherever its input
        # is > 0 (and 0 on the padding, where its denominator is 0), on every backend.
        single = torch.zeros_like(weight)
        single[:, 0] = torch.tensor([0.3, -0.7, 1.9, -0.1, 3.7, -2.3, 0.6])[:filters].to(weight.dtype)
        for scale in (1.0, 0.37, 1e-3):
            s_mean, s_max = updated(impl, single, inputs * scale + 0.1, geometry, negative)
            assert (s_max[:, 0] == 1.0).all()
            assert (s_mean[:, 0] > 0.2).all()
            assert (s_max[:, 1:] == 0).all()


def test_running_max_over_batches_equals_one_batch():
    geometry = Geometry((3, 2), (2, 1), (1, 0), (1, 2))
    weight, inputs = make_case(geometry, 6, (3, 9, 10), batch=23, seed=5)
    zeros = (torch.zeros_like(weight), torch.zeros_like(weight))
    whole = updated("cpu", weight, inputs, geometry, zeros)
    s_mean, s_max = (torch.zeros_like(weight), torch.zeros_like(weight))
    for part in inputs.split((1, 9, 6, 7)):
        run("cpu", weight, part, geometry, s_mean, s_max)
    assert torch.equal(s_mean, whole[0])
    assert torch.equal(s_max, whole[1])


@pytest.mark.parametrize(("name", "geometry", "filters", "shape"), LAYERS, ids=IDS)
def test_dispatcher_blocks_of_examples_change_nothing(name, geometry, filters, shape, monkeypatch):
    weight, inputs = make_case(geometry, filters, shape, batch=21, seed=9)
    state = initial_state(weight, 9)
    whole = updated("dispatch", weight, inputs, geometry, state)
    monkeypatch.setattr(ops, "DENOMINATOR_BUDGET", 1)  # one example per kernel call
    blocks = updated("dispatch", weight, inputs, geometry, state)
    assert torch.equal(whole[0], blocks[0])
    assert torch.equal(whole[1], blocks[1])
    torch.testing.assert_close(
        whole[0], updated("reference", weight, inputs, geometry, state)[0], rtol=0, atol=TIGHT
    )


class _RecordingKernels:
    """pyprune._C, recording the value scans and the kernel calls of the CPU path."""

    def __init__(self):
        self.calls = []

    def check_sensitivity_values(self, weight, inputs):
        self.calls.append("scan")
        return _C.check_sensitivity_values(weight, inputs)

    def sensitivity_update(self, *args, **kwargs):
        self.calls.append(("kernel", kwargs.get("check_values", True)))
        return _C.sensitivity_update(*args, **kwargs)


def test_cpu_path_scans_the_values_once_before_any_block(monkeypatch):
    geometry = Geometry((3, 3), (1, 1), (1, 1), (1, 1))
    weight, inputs = make_case(geometry, 4, (2, 6, 5), batch=5, seed=4)
    recording = _RecordingKernels()
    monkeypatch.setattr(ops, "cpu_kernels", lambda: recording)
    monkeypatch.setattr(ops, "DENOMINATOR_BUDGET", 1)  # one example per kernel call
    state = initial_state(weight, 4)
    with use_backend("auto"):
        got = updated("dispatch", weight, inputs, geometry, state)
        assert recording.calls == ["scan"] + [("kernel", False)] * 5
        want = updated("reference", weight, inputs, geometry, state)
        torch.testing.assert_close(got, want, rtol=0, atol=TIGHT)
        # A bad value in the last block: refused before the first block touched the maxima.
        inputs[-1, 0, 0, 0] = float("nan")
        s_mean, s_max = (s.clone() for s in state)
        with pytest.raises(ValueError, match=r"^inputs: contains NaN or inf$"):
            sensitivity_update(weight, inputs, geometry, s_mean, s_max)
        assert torch.equal(s_mean, state[0])
        assert torch.equal(s_max, state[1])


def test_dispatcher_accepts_views_and_other_input_dtypes():
    geometry = Geometry((3, 3), (1, 1), (1, 1), (1, 1))
    weight, inputs = make_case(geometry, 4, (2, 6, 5), batch=6, seed=2)
    want = updated("reference", weight, inputs, geometry, initial_state(weight, 2))
    # Transposed (non-contiguous) state and weight views, strided inputs, float32 inputs converted to float64.
    weight_view = weight.T.contiguous().T
    wide = torch.zeros(6, 2, 6, 10, dtype=torch.float64)
    wide[..., ::2] = inputs
    state = [s.T.contiguous().T for s in initial_state(weight, 2)]
    sensitivity_update(weight_view, wide[..., ::2], geometry, *state)
    for g, w in zip(state, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=TIGHT)
    exact_in_float32 = (inputs * 64).round() / 64
    state = [s.clone() for s in initial_state(weight, 2)]
    sensitivity_update(weight, exact_in_float32.float(), geometry, *state)
    want = updated("reference", weight, exact_in_float32, geometry, initial_state(weight, 2))
    for g, w in zip(state, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=TIGHT)


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_empty_batch_changes_nothing(backend):
    geometry = Geometry((3, 3), (1, 1), (1, 1), (1, 1))
    weight, inputs = make_case(geometry, 4, (2, 6, 5), batch=3, seed=2)
    state = initial_state(weight, 1)
    s_mean, s_max = (s.clone() for s in state)
    with use_backend(backend):
        sensitivity_update(weight, inputs[:0], geometry, s_mean, s_max)
    assert torch.equal(s_mean, state[0])
    assert torch.equal(s_max, state[1])


# --------------------------------------------------------------------------------------------------------------
# The tracker end to end (batch doubling for signed inputs, Linear and Conv2d layers, running max over batches)


def tracker_model(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
        nn.ReLU(),
        nn.Conv2d(6, 5, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(5 * 5 * 6, 4),
    ).to(dtype)
    with torch.no_grad():
        model[2].weight[model[2].weight.abs() < 0.05] = 0.0  # pruned weights
    return model


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_tracker_end_to_end_kernel_vs_reference(dtype):
    model = tracker_model(dtype)
    images = torch.randn(11, 3, 9, 8, generator=torch.Generator().manual_seed(1), dtype=dtype)  # signed
    batches = [images[:4], images[4:7], images[7:]]
    trackers = {}
    for backend in ("auto", "reference"):
        with use_backend(backend):
            trackers[backend] = SensitivityTracker(model).accumulate_over(batches, progress=False)
    with use_backend("reference"):
        truth = SensitivityTracker(tracker_model(torch.float64)).accumulate_over(
            [b.double() for b in batches], progress=False
        )
    got, want = trackers["auto"], trackers["reference"]
    for name in got.layer_names:
        for reduce in ("mean", "max"):
            g, w = got.weight_sensitivity(name, reduce), want.weight_sensitivity(name, reduce)
            assert g.shape == model.get_submodule(name).weight.shape
            if dtype == torch.float64:
                torch.testing.assert_close(g, w, rtol=0, atol=TIGHT)
            else:
                assert_float32_close(g, w, truth.weight_sensitivity(name, reduce), f"{name} {reduce}")
        c, r = got.channel_sensitivity(name), want.channel_sensitivity(name)
        torch.testing.assert_close(c, r, rtol=0, atol=TIGHT if dtype == torch.float64 else 1e-5)
    first = got.weight_sensitivity("0", "max")
    assert float(first.max()) > 0.1


# --------------------------------------------------------------------------------------------------------------
# Argument errors: the same exception and message on every backend


def _conv():
    return Geometry((3, 3), (1, 1), (0, 0), (1, 1))


def _bad_inputs(device="cpu"):
    """(weight, inputs, geometry, s_mean, s_max), exception, message: errors every backend raises alike."""
    conv = _conv()
    w, x = make_case(conv, 4, (2, 5, 6), batch=2, seed=0, device=device)
    s = torch.zeros_like(w)
    wl, xl = make_case(Geometry(), 3, (7,), batch=2, seed=0, device=device)
    sl = torch.zeros_like(wl)
    nan, neg, inf = x.clone(), x.clone(), x.clone()
    nan[1, 0, 2, 3] = float("nan")
    neg[0, 1, 0, 0] = -1e-3
    inf[0, 0, 0, 0] = float("inf")
    bad_weight = w.clone()
    bad_weight[2, 3] = float("inf")
    return [
        ((w.long(), x, conv, s, s), TypeError, "weight: expected float32 or float64, got int64"),
        (
            (w[None], x, conv, s, s),
            ValueError,
            r"weight: expected a 2-D \(F, J\) matrix, got shape \(1, 4, 18\)",
        ),
        (
            (w, x, Geometry((3, 3), (1,), (0, 0), (1, 1)), s, s),
            ValueError,
            r"geometry: expected kernel_size, stride, padding and dilation as \(h, w\) pairs \(all four empty for a "
            r"Linear layer\), got kernel_size=\(3, 3\), stride=\(1,\), padding=\(0, 0\), dilation=\(1, 1\)",
        ),
        (
            (w, x, Geometry((3, 3), (0, 1), (0, 0), (1, 1)), s, s),
            ValueError,
            r"geometry: expected kernel_size >= 1, stride >= 1, padding >= 0 and dilation >= 1, got "
            r"kernel_size=\(3, 3\), stride=\(0, 1\), padding=\(0, 0\), dilation=\(1, 1\)",
        ),
        (
            (w[:, :10].contiguous(), x, conv, s, s),
            ValueError,
            "weight: expected J = C_in \\* 3 \\* 3 columns, got 10",
        ),
        (
            (w, x[:, :1].contiguous(), conv, s, s),
            ValueError,
            r"inputs: expected shape \(batch, 2, H, W\), got shape \(2, 1, 5, 6\)",
        ),
        (
            (w, x[0], conv, s, s),
            ValueError,
            r"inputs: expected shape \(batch, 2, H, W\), got shape \(2, 5, 6\)",
        ),
        (
            (wl, xl[:, :6].contiguous(), Geometry(), sl, sl),
            ValueError,
            r"inputs: expected shape \(batch, 7\), got shape \(2, 6\)",
        ),
        (
            (w, x[:, :, :2].contiguous(), conv, s, s),
            ValueError,
            r"inputs: a 2 x 6 input leaves no output position for kernel_size=\(3, 3\), stride=\(1, 1\), "
            r"padding=\(0, 0\), dilation=\(1, 1\)",
        ),
        (
            (w, x, conv, s.float(), s),
            TypeError,
            r"s_mean: expected float64 \(the dtype of weight\), got float32",
        ),
        (
            (w, x, conv, s, s[:, :17].contiguous()),
            ValueError,
            r"s_max: expected shape \(4, 18\), got shape \(4, 17\)",
        ),
        ((bad_weight, x, conv, s, s), ValueError, "weight: contains NaN or inf"),
        ((w, nan, conv, s, s), ValueError, "inputs: contains NaN or inf"),
        ((w, inf, conv, s, s), ValueError, "inputs: contains NaN or inf"),
        ((w, neg, conv, s, s), ValueError, re.escape(NEGATIVE_INPUTS_MESSAGE)),
    ]


def _kernel_bad_inputs(device="cpu"):
    """(weight, inputs, geometry, z, s_mean, s_max), exception, message: the kernels' own rules."""
    conv = _conv()
    w, x = make_case(conv, 4, (2, 5, 6), batch=2, seed=0, device=device)
    z = denominators(w, x, conv)
    s = torch.zeros_like(w)
    return [
        (
            (w, x.float(), conv, z, s, s),
            TypeError,
            r"inputs: expected float64 \(the dtype of weight\), got float32",
        ),
        ((w.T.contiguous().T, x, conv, z, s, s), ValueError, "weight: must be contiguous"),
        (
            (w, x.transpose(2, 3).contiguous().transpose(2, 3), conv, z, s, s),
            ValueError,
            "inputs: must be contiguous",
        ),
        (
            (w, x, conv, z.float(), s, s),
            TypeError,
            r"z: expected float64 \(the dtype of weight\), got float32",
        ),
        (
            (w, x, conv, z[..., :11].contiguous(), s, s),
            ValueError,
            r"z: expected shape \(batch, 2, F, P\) = \(2, 2, 4, 12\), got shape \(2, 2, 4, 11\)",
        ),
        (
            (w, x, conv, z.transpose(2, 3).contiguous().transpose(2, 3), s, s),
            ValueError,
            "z: must be contiguous",
        ),
        ((w, x, conv, z, s.T.contiguous().T, s), ValueError, "s_mean: must be contiguous"),
    ]


def _message(call, args) -> tuple[type, str]:
    with pytest.raises((TypeError, ValueError)) as info:
        call(*args)
    return info.type, str(info.value)


def _direct(weight, inputs, geometry, z, s_mean, s_max):
    pairs = (geometry.kernel_size, geometry.stride, geometry.padding, geometry.dilation)
    arrays = [t.numpy() for t in (weight, inputs, z, s_mean, s_max)]
    return _C.sensitivity_update(*arrays, *pairs, 2)


def _z_for(weight, inputs, geometry):
    """z where the arguments allow one (the kernel checks z after weight, geometry and inputs), else a dummy."""
    try:
        return denominators(weight, inputs, geometry)
    except (RuntimeError, TypeError, ValueError):
        return torch.zeros(1, dtype=torch.float64)


@pytest.mark.parametrize(("args", "error", "message"), _bad_inputs())
def test_argument_errors_match(args, error, message):
    with pytest.raises(error, match=f"^{message}$"):
        check_sensitivity_arguments(*args)
    weight, inputs, geometry, s_mean, s_max = args
    before = [s_mean.clone(), s_max.clone()]
    with use_backend("reference"):
        reference = _message(sensitivity_update, args)
    with use_backend("auto"):
        auto = _message(sensitivity_update, args)
    direct = _message(_direct, (weight, inputs, geometry, _z_for(weight, inputs, geometry), s_mean, s_max))
    assert reference == auto == direct == (error, reference[1])
    assert torch.equal(s_mean, before[0])  # nothing was updated
    assert torch.equal(s_max, before[1])


@pytest.mark.parametrize(("args", "error", "message"), _kernel_bad_inputs())
def test_kernel_argument_errors_match(args, error, message):
    with pytest.raises(error, match=f"^{message}$"):
        check_kernel_arguments(*args)
    assert _message(_direct, args) == (error, _message(check_kernel_arguments, args)[1])


def test_argument_errors_name_non_tensors_and_read_only_state():
    weight, inputs = make_case(Geometry(), 3, (7,), batch=2, seed=0)
    s = torch.zeros_like(weight)
    with pytest.raises(TypeError, match=r"^inputs: expected a torch\.Tensor, got list$"):
        sensitivity_update(weight, [[1.0] * 7], Geometry(), s, s)
    with pytest.raises(
        TypeError, match=r"^geometry: expected a pyprune\.ops\.sensitivity\.Geometry, got tuple$"
    ):
        sensitivity_update(weight, inputs, ((3, 3),), s, s)
    with pytest.raises(TypeError, match=r"^inputs: expected a floating-point tensor, got int64$"):
        sensitivity_update(weight, inputs.long(), Geometry(), s, s)
    read_only = s.numpy().copy()
    read_only.flags.writeable = False
    z = denominators(weight, inputs, Geometry())
    with pytest.raises(ValueError, match=r"^s_max: must be writeable \(updated in place\)$"):
        _C.sensitivity_update(weight.numpy(), inputs.numpy(), z.numpy(), s.numpy(), read_only)


# --------------------------------------------------------------------------------------------------------------
# CUDA (skipped without CuPy and a GPU)


def cuda_only(test):
    skip = pytest.mark.skipif(
        not _cuda.available(), reason=f"CUDA kernels unavailable: {_cuda.unavailable_reason()}"
    )
    return pytest.mark.cuda(skip(test))


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("name", "geometry", "filters", "shape"), LAYERS, ids=IDS)
def test_cuda_matches_reference(name, geometry, filters, shape, dtype):
    for batch in (1, 17, 70):
        weight, inputs = make_case(geometry, filters, shape, batch, seed=batch, dtype=dtype)
        state = initial_state(weight, batch)
        reference = updated("reference", weight, inputs, geometry, state)
        got = updated("cuda", weight.cuda(), inputs.cuda(), geometry, [s.cuda() for s in state])
        assert got[0].device.type == "cuda"
        if dtype == torch.float64:
            for g, w in zip(got, reference, strict=True):
                torch.testing.assert_close(g.cpu(), w, rtol=0, atol=TIGHT)
        else:
            want64 = updated(
                "reference", weight.double(), inputs.double(), geometry, [s.double() for s in state]
            )
            assert_float32_close(got, reference, want64, name)


@cuda_only
def test_cuda_larger_layers_and_dispatch():
    for geometry, filters, shape, batch in [
        (Geometry((3, 3), (1, 1), (1, 1), (1, 1)), 37, (30, 13, 12), 19),
        (Geometry(), 40, (700,), 300),
    ]:
        weight, inputs = make_case(geometry, filters, shape, batch, seed=filters)
        state = initial_state(weight, filters)
        want = updated("reference", weight, inputs, geometry, state)
        got = updated("dispatch", weight.cuda(), inputs.cuda(), geometry, [s.cuda() for s in state])
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g.cpu(), w, rtol=0, atol=TIGHT)
        single = torch.zeros_like(weight)
        single[:, 3] = torch.linspace(-2.0, 3.0, filters, dtype=weight.dtype)
        single[single[:, 3] == 0, 3] = 0.5
        for dtype in (torch.float64, torch.float32):
            zeros = torch.zeros(single.shape, dtype=dtype, device="cuda")
            s_max = updated(
                "dispatch", single.cuda().to(dtype), inputs.cuda().to(dtype) + 0.1, geometry, (zeros, zeros)
            )[1]
            assert (s_max[:, 3] == 1.0).all()  # a lone weight's contribution is exactly 1


@cuda_only
def test_cuda_tracker_and_argument_errors():
    model = tracker_model(torch.float64)
    images = torch.randn(11, 3, 9, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with use_backend("reference"):
        want = SensitivityTracker(model).accumulate_over([images], progress=False)
    got = SensitivityTracker(model.cuda()).accumulate_over([images.cuda()], progress=False)
    for name in got.layer_names:
        torch.testing.assert_close(
            got.weight_sensitivity(name).cpu(), want.weight_sensitivity(name), rtol=0, atol=TIGHT
        )
    for (args, _, _), (cpu_args, _, _) in zip(_bad_inputs("cuda"), _bad_inputs(), strict=True):
        assert _message(sensitivity_update, args) == _message(sensitivity_update, cpu_args)
    for (args, _, _), (cpu_args, _, _) in zip(_kernel_bad_inputs("cuda"), _kernel_bad_inputs(), strict=True):
        assert _message(_cuda.sensitivity_update_cuda, args) == _message(check_kernel_arguments, cpu_args)
