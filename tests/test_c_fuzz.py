"""The compiled boundary (``pyprune._C``) under hostile arguments, and its determinism and GIL behaviour.

Every binding must answer absurd sizes (products that wrap 64-bit integers, huge paddings, absurd thread
counts, out-of-range indices), wrong dtypes, misaligned or strided memory with a Python exception, never a
signal. The calls run in a child process so that a crash fails the test (naming the case) instead of killing
pytest. Arrays whose shape and strides lie about their memory (``numpy.lib.stride_tricks.as_strided`` past
the buffer) are out of scope: nothing can check them, NumPy itself crashes on them.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pyprune.ops.backend import cpu_kernels

_C = cpu_kernels()
pytestmark = pytest.mark.skipif(_C is None, reason="pyprune._C is not built")

# Each case: (name, expression); evaluated in the child with np and C (pyprune._C) in scope. Every one must
# raise a Python exception.
_HUGE = 2**62
# rbf_candidate_scan on a valid 3-sample problem with the candidates replaced.
_SCAN = "C.rbf_candidate_scan(np.eye(3), np.zeros((2, 3, 1)), {cand}, np.ones(1), np.eye(3))"
# sensitivity_update of a 1-channel conv on a 1 x 1 x 4 x 4 input with the geometry replaced.
_SENS = (
    "C.sensitivity_update(np.ones((2, 1)), np.ones((1, 1, 4, 4)), np.ones((1, 2, 2, 16)), np.zeros((2, 1)), "
    "np.zeros((2, 1)), {k}, {s}, {p}, {d})"
)
_CASES = {
    "gram_hsic_terms": [
        ("no matrices", "C.gram_hsic_terms([])"),
        ("threads -1", "C.gram_hsic_terms([np.eye(3)], None, -1)"),
        ("threads 2**31-1", "C.gram_hsic_terms([np.eye(300)], None, 2**31 - 1)"),
        ("threads 2**40", "C.gram_hsic_terms([np.eye(3)], None, 2**40)"),
        ("not square", "C.gram_hsic_terms([np.zeros((3, 4))])"),
        ("3-D", "C.gram_hsic_terms([np.zeros((2, 3, 3))])"),
        ("float16", "C.gram_hsic_terms([np.eye(3, dtype=np.float16)])"),
        ("int64", "C.gram_hsic_terms([np.eye(3, dtype=np.int64)])"),
        ("complex", "C.gram_hsic_terms([np.eye(3, dtype=np.complex128)])"),
        ("big-endian", "C.gram_hsic_terms([np.eye(3, dtype='>f8')])"),
        ("object", "C.gram_hsic_terms([np.empty((3, 3), dtype=object)])"),
        ("transposed", "C.gram_hsic_terms([np.arange(12.0).reshape(3, 4)[:, :3].T])"),
        ("stride 0", "C.gram_hsic_terms([np.broadcast_to(np.arange(3.0), (3, 3))])"),
        ("negative row stride", "C.gram_hsic_terms([np.eye(3)[::-1]])"),
        ("misaligned", "C.gram_hsic_terms([np.frombuffer(bytearray(8 * 9 + 1), offset=1).reshape(3, 3)])"),
        ("mixed dtypes", "C.gram_hsic_terms([np.eye(3)], [np.eye(3, dtype=np.float32)])"),
        ("mismatched n", "C.gram_hsic_terms([np.eye(3)], [np.eye(4)])"),
    ],
    "rbf_from_linear_gram": [
        ("n = 0", "C.rbf_from_linear_gram(np.zeros((0, 0)), 0.5)"),
        ("n = 1", "C.rbf_from_linear_gram(np.ones((1, 1)), 0.5)"),
        ("threshold nan", "C.rbf_from_linear_gram(np.eye(3), float('nan'))"),
        ("threshold -1", "C.rbf_from_linear_gram(np.eye(3), -1.0)"),
        ("threads 0", "C.rbf_from_linear_gram(np.eye(3), 0.5, 0)"),
        ("threads 2**31-1", "C.rbf_from_linear_gram(np.eye(3000, dtype=np.float32), 0.5, 2**31 - 1)"),
        ("read-only", "C.rbf_from_linear_gram(np.broadcast_to(np.eye(3), (3, 3)), 0.5)"),
        ("int32", "C.rbf_from_linear_gram(np.eye(3, dtype=np.int32), 0.5)"),
    ],
    "greedy_removal_order": [
        ("not square", "C.greedy_removal_order(np.zeros((2, 3)))"),
        ("float32", "C.greedy_removal_order(np.eye(3, dtype=np.float32))"),
        ("active too short", "C.greedy_removal_order(np.eye(3), np.ones(2, dtype=bool))"),
        ("active int", "C.greedy_removal_order(np.eye(3), np.ones(3, dtype=np.int64))"),
        ("threads -5", "C.greedy_removal_order(np.eye(3), None, -5)"),
        ("threads 2**31-1", "C.greedy_removal_order(np.eye(3000), None, 2**31 - 1)"),
        ("non-contiguous", "C.greedy_removal_order(np.eye(6)[::2, ::2])"),
    ],
    "rbf_candidate_scan": [
        ("candidate 2**62", _SCAN.format(cand="np.array([2**62])")),
        ("candidate -1", _SCAN.format(cand="np.array([-1])")),
        ("candidate -2**63", _SCAN.format(cand="np.array([-2**63])")),
        ("candidates int32", _SCAN.format(cand="np.array([0], dtype=np.int32)")),
        (
            "values wrong n",
            "C.rbf_candidate_scan(np.eye(3), np.zeros((2, 4, 1)), np.array([0]), np.ones(1), np.eye(3))",
        ),
        (
            "inv wrong length",
            "C.rbf_candidate_scan(np.eye(3), np.zeros((2, 3, 1)), np.array([0]), np.ones(5), np.eye(3))",
        ),
        (
            "target wrong n",
            "C.rbf_candidate_scan(np.eye(3), np.zeros((2, 3, 1)), np.array([0]), np.ones(1), np.eye(4))",
        ),
        ("threads 0", _SCAN.format(cand="np.array([0])")[:-1] + ", 0)"),
    ],
    "sensitivity_update": [
        (
            "kernel 2**32 x 2**32 (product wraps to 0)",
            _SENS.format(k="[2**32, 2**32]", s="[1, 1]", p="[0, 0]", d="[1, 1]"),
        ),
        ("kernel 2**62 x 4", _SENS.format(k="[2**62, 4]", s="[1, 1]", p="[0, 0]", d="[1, 1]")),
        ("padding 2**62", _SENS.format(k="[1, 1]", s="[1, 1]", p=f"[{_HUGE}, {_HUGE}]", d="[1, 1]")),
        (
            "padding 2**62, stride 2**62",
            _SENS.format(k="[1, 1]", s=f"[{_HUGE}, {_HUGE}]", p=f"[{_HUGE}, {_HUGE}]", d="[1, 1]"),
        ),
        ("dilation 2**62", _SENS.format(k="[2, 1]", s="[1, 1]", p="[0, 0]", d=f"[{_HUGE}, 1]")),
        ("stride 2**63-1", _SENS.format(k="[1, 1]", s="[2**63 - 1, 1]", p="[0, 0]", d="[1, 1]")),
        ("stride 2**64 (not an int64)", _SENS.format(k="[1, 1]", s="[2**64, 1]", p="[0, 0]", d="[1, 1]")),
        ("negative kernel", _SENS.format(k="[-1, 1]", s="[1, 1]", p="[0, 0]", d="[1, 1]")),
        ("rank 3 geometry", _SENS.format(k="[1, 1, 1]", s="[1, 1, 1]", p="[0, 0, 0]", d="[1, 1, 1]")),
        (
            "threads 2**31-1",
            _SENS.format(k="[1, 1]", s="[1, 1]", p="[0, 0]", d="[1, 1]")[:-1] + ", 2**31 - 1)",
        ),
        (
            "weight float16",
            "C.sensitivity_update(np.ones((2, 3), np.float16), np.ones((1, 3)), np.ones((1, 2, 2, 1)), np.zeros((2, 3)), np.zeros((2, 3)))",
        ),
        (
            "z wrong shape",
            "C.sensitivity_update(np.ones((2, 3)), np.ones((1, 3)), np.ones((1, 2, 2, 2)), np.zeros((2, 3)), np.zeros((2, 3)))",
        ),
    ],
    "column_stats": [
        ("0 rows", "C.column_stats(np.ones((0, 3)), 1)"),
        ("0 columns", "C.column_stats(np.ones((3, 0)), 1)"),
        ("1-D", "C.column_stats(np.ones(3), 1)"),
        ("3-D", "C.column_stats(np.ones((2, 2, 2)), 1)"),
        ("float16", "C.column_stats(np.ones((2, 3), np.float16), 1)"),
        ("strided columns", "C.column_stats(np.ones((4, 6))[:, ::2], 1)"),
        ("negative row stride", "C.column_stats(np.ones((4, 3))[::-1], 1)"),
        ("big-endian", "C.column_stats(np.ones((2, 3), '>f8'), 1)"),
        ("threads 0", "C.column_stats(np.ones((2, 3)), 0)"),
        ("threads 2**31-1", "C.column_stats(np.ones((2, 3)), 2**31 - 1)"),
    ],
    "nm_select": [
        ("k = 2**62", "C.nm_select(np.ones((2, 4)), None, 2**62, 0, 0, 1)"),
        ("k = -1", "C.nm_select(np.ones((2, 4)), None, -1, 0, 0, 1)"),
        ("n >= m", "C.nm_select(np.ones((2, 4)), None, 0, 4, 2, 1)"),
        ("m = -2**62", "C.nm_select(np.ones((2, 4)), None, 0, 1, -2**62, 1)"),
        ("m does not divide", "C.nm_select(np.ones((2, 4)), None, 0, 1, 3, 1)"),
        ("threads 0", "C.nm_select(np.ones((2, 4)), None, 1, 0, 0, 0)"),
        ("norms wrong length", "C.nm_select(np.ones((2, 4)), np.ones(3), 1, 0, 0, 1)"),
        ("complex weight", "C.nm_select(np.ones((2, 4), np.complex64), None, 1, 0, 0, 1)"),
    ],
    "check_sensitivity_values": [
        (
            "weight float16",
            "C.check_sensitivity_values(np.ones((2, 3), np.float16), np.ones((1, 3), np.float16))",
        ),
        ("mixed dtypes", "C.check_sensitivity_values(np.ones((2, 3)), np.ones((1, 3), np.float32))"),
        ("non-contiguous inputs", "C.check_sensitivity_values(np.ones((2, 3)), np.ones((3, 4))[:, ::2])"),
        ("big-endian", "C.check_sensitivity_values(np.ones((2, 3), '>f8'), np.ones((1, 3), '>f8'))"),
        ("nan weight", "C.check_sensitivity_values(np.full((2, 3), np.nan), np.ones((1, 3)))"),
        ("negative inputs", "C.check_sensitivity_values(np.ones((2, 3)), -np.ones((1, 3)))"),
    ],
    "permutation_hsic": [
        ("index 2**62", "C.permutation_hsic(np.eye(3), np.eye(3), np.array([[0, 1, 2**62]]), 1)"),
        ("index -1", "C.permutation_hsic(np.eye(3), np.eye(3), np.array([[0, 1, -1]]), 1)"),
        ("wrong width", "C.permutation_hsic(np.eye(3), np.eye(3), np.zeros((2, 4), np.int64), 1)"),
        ("int32 permutations", "C.permutation_hsic(np.eye(3), np.eye(3), np.zeros((2, 3), np.int32), 1)"),
        ("mismatched n", "C.permutation_hsic(np.eye(3), np.eye(4), np.zeros((2, 3), np.int64), 1)"),
    ],
}

# The child loads the extension by path: no torch import, so a case costs microseconds, not seconds.
_CHILD = textwrap.dedent(
    """
    import importlib.util
    import numpy as np

    spec = importlib.util.spec_from_file_location("pyprune._C", PATH)
    C = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(C)
    for name, expression in CASES:
        print("START", name, flush=True)
        try:
            eval(expression)
        except Exception as exc:
            print("RAISED", name, type(exc).__name__, str(exc).splitlines()[0][:200], flush=True)
        else:
            print("RETURNED", name, flush=True)
    print("DONE", flush=True)
    """
)


def run_cases(cases: list[tuple[str, str]]) -> list[str]:
    """Run the cases in a child process; returns its output lines after checking that it did not die."""
    script = f"PATH = {_C.__file__!r}\nCASES = {cases!r}\n" + _CHILD
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    lines = result.stdout.splitlines()
    started = [line[len("START ") :] for line in lines if line.startswith("START ")]
    last = started[-1] if started else "?"
    assert result.returncode == 0, (
        f"child died (status {result.returncode}) in {last!r}\n{result.stderr[-2000:]}"
    )
    assert lines[-1] == "DONE", f"child stopped in {last!r}"
    return lines


def test_hostile_arguments_raise_python_exceptions():
    """Every hostile call to every binding raises (TypeError/ValueError/...): no signal, no silent return."""
    cases = [
        (f"{function}: {name}", expression)
        for function, function_cases in _CASES.items()
        if hasattr(_C, function)
        for name, expression in function_cases
    ]
    returned = [line for line in run_cases(cases) if line.startswith("RETURNED")]
    assert not returned, f"hostile calls returned normally: {returned}"


def test_every_binding_is_fuzzed():
    """A new binding must get hostile cases here too."""
    public = {name for name in dir(_C) if not name.startswith("_") and callable(getattr(_C, name))}
    assert public <= set(_CASES), f"no fuzz cases for {sorted(public - set(_CASES))}"


def test_nan_scores_do_not_break_nm_select():
    """NaN compares false with everything, which breaks nth_element's order (and can run it off the row): the
    kernel ranks a NaN score as +inf instead. Run in a child, so that a crash fails the test and nothing else."""
    cases = [
        ("nan weight", "C.nm_select(np.where(np.eye(64) > 0, np.nan, 1.0), None, 17, 0, 0, 2)"),
        ("inf weight, zero norm", "C.nm_select(np.full((3, 64), np.inf), np.zeros(64), 0, 2, 4, 2)"),
        ("nan norms", "C.nm_select(np.ones((3, 64)), np.full(64, np.nan), 30, 0, 0, 2)"),
    ]
    assert [line for line in run_cases(cases) if line.startswith("RETURNED")] == [
        f"RETURNED {name}" for name, _ in cases
    ]
    weight = np.ones((2, 8))
    weight[0, 3] = np.nan
    removed = _C.nm_select(weight, None, 7, 0, 0, 1)
    assert removed[0, 3] == 0  # the NaN ranks last: kept
    assert removed.sum() == 14


def test_overflowing_kernel_size_names_the_argument():
    """The issue's reproducer: kernel_size 2**32 x 2**32 made the tap count wrap to 0 (SIGFPE)."""
    with pytest.raises(ValueError, match="kernel_size"):
        _C.sensitivity_update(
            np.ones((2, 1)),
            np.ones((1, 1, 4, 4)),
            np.ones((1, 2, 2, 16)),
            np.zeros((2, 1)),
            np.zeros((2, 1)),
            [2**32, 2**32],
            [1, 1],
            [0, 0],
            [1, 1],
        )


def test_dtypes_are_compared_by_value():
    """A float64 dtype carrying metadata is float64: accepted, with the plain float64 result."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 5))
    gram = x @ x.T
    tagged = gram.view(np.dtype(np.float64, metadata={"unit": "activation^2"}))
    assert tagged.dtype.metadata
    assert tagged.dtype == np.float64
    plain = _C.gram_hsic_terms([gram])
    got = _C.gram_hsic_terms([tagged])
    np.testing.assert_array_equal(got["cross"], plain["cross"])
    np.testing.assert_allclose(got["cross"][0, 0], np.sum(gram * gram), rtol=1e-12)
    single = gram.astype(np.float32).view(np.dtype(np.float32, metadata={"unit": "x"}))
    assert _C.gram_hsic_terms([single])["cross"].shape == (1, 1)


def _tagged(array: np.ndarray) -> np.ndarray:
    """``array`` viewed with an equal dtype that carries metadata (a different dtype object)."""
    tagged = array.view(np.dtype(array.dtype, metadata={"unit": "x"}))
    assert tagged.dtype == array.dtype
    assert tagged.dtype is not array.dtype
    return tagged


def test_every_binding_compares_dtypes_by_value():
    """Each binding gives the same result for arrays whose dtypes carry metadata (nm_select once compared dtype
    objects by identity and refused a tagged float64 as "got float64")."""
    rng = np.random.default_rng(2)
    weight, norms = rng.standard_normal((3, 8)), rng.random(8)
    for w in (weight, weight.astype(np.float32)):
        np.testing.assert_array_equal(
            _C.nm_select(_tagged(w), _tagged(norms), 3, 0, 0, 1), _C.nm_select(w, norms, 3, 0, 0, 1)
        )
    m = rng.random((5, 5))
    m = m @ m.T
    active = np.array([True, False, True, True, True])
    for got, want in zip(
        _C.greedy_removal_order(_tagged(m), _tagged(active)), _C.greedy_removal_order(m, active), strict=True
    ):
        np.testing.assert_array_equal(got, want)
    perms = np.array([[0, 1, 2, 3, 4], [4, 2, 0, 1, 3]])
    np.testing.assert_array_equal(
        _C.permutation_hsic(_tagged(m), _tagged(m), _tagged(perms)), _C.permutation_hsic(m, m, perms)
    )
    values, candidates, inv = rng.random((3, 5, 2)), np.array([0, 2]), np.array([0.5, 0.25])
    scan = _C.rbf_candidate_scan(m, values, candidates, inv, m)
    tagged_scan = _C.rbf_candidate_scan(*map(_tagged, (m, values, candidates, inv, m)))
    for key, value in scan.items():
        np.testing.assert_array_equal(tagged_scan[key], value)
    gram, tagged_gram = m.copy(), _tagged(m.copy())
    assert _C.rbf_from_linear_gram(tagged_gram, 0.5) == _C.rbf_from_linear_gram(gram, 0.5)
    np.testing.assert_array_equal(tagged_gram, gram)
    weight, inputs = rng.standard_normal((2, 3)), rng.random((4, 3))
    z = np.stack([np.maximum(weight, 0) @ inputs.T, np.minimum(weight, 0) @ inputs.T]).transpose(2, 0, 1)[
        ..., None
    ]
    z = np.ascontiguousarray(z)
    want = [np.zeros((2, 3)), np.zeros((2, 3))]
    _C.sensitivity_update(weight, inputs, z, *want)
    got = [_tagged(np.zeros((2, 3))), _tagged(np.zeros((2, 3)))]
    _C.check_sensitivity_values(_tagged(weight), _tagged(inputs))
    _C.sensitivity_update(_tagged(weight), _tagged(inputs), _tagged(z), *got)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    assert want[0].max() > 0


def test_gram_hsic_terms_is_bit_identical_across_runs():
    """30 identical calls give the same bits for a given thread count (partials merged in a fixed order)."""
    rng = np.random.default_rng(1)
    grams = []
    for p in (7, 30, 90):
        x = rng.standard_normal((700, p)).astype(np.float32)
        grams.append(x @ x.T)
    for threads in (2, 3):
        for grams_b in (None, grams[:2]):
            first = _C.gram_hsic_terms(grams, grams_b, threads)
            for _ in range(29):
                again = _C.gram_hsic_terms(grams, grams_b, threads)
                for key, value in first.items():
                    np.testing.assert_array_equal(again[key], value, err_msg=f"{key}, {threads} threads")
    expected = np.array([[np.sum(a.astype(np.float64) * b) for b in grams] for a in grams])
    np.testing.assert_allclose(_C.gram_hsic_terms(grams, None, 2)["cross"], expected, rtol=1e-10)
