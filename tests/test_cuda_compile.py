"""Every ``csrc/cuda/*.cu`` compiles, with the options and template instantiations ``pyprune.ops.cuda`` uses.

No GPU is needed: NVRTC only translates CUDA C++ to PTX. The compiler is NVRTC through ``cuda.bindings.nvrtc``
(the ``cuda-bindings`` package, which loads ``libnvrtc.so`` from the ``nvidia-cuda-nvrtc`` wheel through
``cuda.pathfinder``, or from a CUDA toolkit), else ``nvcc -ptx`` if ``nvcc`` is on PATH. Without either the
tests skip, except under ``CI=true``, where they fail. ``PYPRUNE_TEST_CUDA_COMPILER=nvrtc|nvcc`` forces one.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyprune.ops import cuda as _cuda

SOURCES = _cuda.cuda_sources()
# Double-precision atomicAdd needs compute capability 6.0; we compile for the oldest architecture the compiler
# supports from there on. CuPy adds -arch for the actual device and appends -ftz=true to NVRTC_OPTIONS.
MIN_ARCH = 60
CUPY_APPENDED_OPTIONS = ("-ftz=true",)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _nvrtc_check(result: tuple, what: str) -> tuple:
    from cuda.bindings import nvrtc

    err, *values = result
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise RuntimeError(f"{what} failed: {nvrtc.nvrtcGetErrorString(err)[1].decode()}")
    return tuple(values)


def _nvrtc_problem() -> str:
    """Empty if NVRTC can be used through cuda-bindings, else why not."""
    try:
        from cuda.bindings import nvrtc

        _nvrtc_check(nvrtc.nvrtcVersion(), "nvrtcVersion")
    except Exception as exc:  # ImportError, or libnvrtc not found/loadable
        return f"cuda.bindings.nvrtc is unusable ({type(exc).__name__}: {exc})"
    return ""


def _nvcc_path() -> str | None:
    found = shutil.which("nvcc")
    if found is None:
        for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
            if home and Path(home, "bin", "nvcc").is_file():
                return str(Path(home, "bin", "nvcc"))
    return found


@functools.cache
def compiler() -> tuple[str, str]:
    """(``"nvrtc"``, ``"nvcc"`` or ``""``, explanation)."""
    forced = os.environ.get("PYPRUNE_TEST_CUDA_COMPILER", "").strip().lower()
    problem = _nvrtc_problem()
    if forced not in ("", "nvrtc", "nvcc"):
        raise ValueError(f"PYPRUNE_TEST_CUDA_COMPILER: expected nvrtc or nvcc, got {forced!r}")
    if forced in ("", "nvrtc") and not problem:
        return "nvrtc", ""
    if forced in ("", "nvcc") and _nvcc_path():
        return "nvcc", problem
    return "", f"{problem or 'NVRTC not requested'}; nvcc is not on PATH either"


def _pick_arch(supported: list[int]) -> int:
    usable = [a for a in supported if a >= MIN_ARCH]
    assert usable, f"the compiler supports no architecture >= {MIN_ARCH}: {supported}"
    return min(usable)


def compile_with_nvrtc(source: Path, expressions: tuple[str, ...]) -> str:
    """PTX of ``source`` with every name expression instantiated; fails the test with the log on error."""
    from cuda.bindings import nvrtc

    (archs,) = _nvrtc_check(nvrtc.nvrtcGetSupportedArchs(), "nvrtcGetSupportedArchs")
    options = [*_cuda.nvrtc_options(source.parent), f"-arch=compute_{_pick_arch(list(archs))}"]
    options += CUPY_APPENDED_OPTIONS
    created = nvrtc.nvrtcCreateProgram(source.read_bytes(), source.name.encode(), 0, [], [])
    (prog,) = _nvrtc_check(created, "nvrtcCreateProgram")
    try:
        for expr in expressions:
            _nvrtc_check(nvrtc.nvrtcAddNameExpression(prog, expr.encode()), f"nvrtcAddNameExpression({expr})")
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(options), [o.encode() for o in options])
        (log_size,) = _nvrtc_check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
        log = b" " * log_size
        _nvrtc_check(nvrtc.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog")
        log_text = log.rstrip(b"\x00").decode(errors="replace").strip()
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            pytest.fail(f"NVRTC failed to compile {source.name} with {options}:\n{log_text}", pytrace=False)
        _fail_on_source_warnings(source, log_text, "NVRTC")
        (ptx_size,) = _nvrtc_check(nvrtc.nvrtcGetPTXSize(prog), "nvrtcGetPTXSize")
        ptx = b" " * ptx_size
        _nvrtc_check(nvrtc.nvrtcGetPTX(prog, ptx), "nvrtcGetPTX")
        ptx_text = ptx.rstrip(b"\x00").decode()
        for expr in expressions:
            (lowered,) = _nvrtc_check(nvrtc.nvrtcGetLoweredName(prog, expr.encode()), f"lowering {expr}")
            entry = rf"\.entry\s+{re.escape(lowered.decode())}\s*\("
            assert re.search(entry, ptx_text), f"{expr} ({lowered.decode()}) is not in the PTX"
        return ptx_text
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def _compile_with_nvrtc_in_child(source: Path, expressions: tuple[str, ...]) -> str:
    """:func:`compile_with_nvrtc` in a fresh interpreter.

    Once libnvrtc has compiled a program in a process, later ``torch.load`` calls in that process can fail
    ("record size ... does not match expected size"), so the compiler never runs inside the test process.
    """
    code = (
        "import sys\nfrom pathlib import Path\nfrom tests.test_cuda_compile import compile_with_nvrtc\n"
        f"sys.stdout.write(compile_with_nvrtc(Path({str(source)!r}), {tuple(expressions)!r}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"NVRTC could not compile {source.name}:\n{done.stderr[-4000:]}", pytrace=False)
    return done.stdout


def compile_with_nvcc(source: Path, expressions: tuple[str, ...], tmp_path: Path) -> str:
    """``nvcc -ptx`` fallback: the name expressions are instantiated by taking the kernels' addresses."""
    nvcc = _nvcc_path()
    listed = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, check=True).stdout
    arch = _pick_arch([int(m) for m in re.findall(r"compute_(\d+)", listed)])
    lines = [source.read_text(), "", "// Instantiations requested by pyprune.ops.cuda (test only)."]
    if expressions:  # an array with external linkage: no unused-variable warning
        lines.append("void* pp_instances[] = {" + ", ".join(f"(void*)&{e}" for e in expressions) + "};")
    unit = tmp_path / source.name
    unit.write_text("\n".join(lines) + "\n")
    options = [*_cuda.nvrtc_options(source.parent), f"-arch=compute_{arch}", *CUPY_APPENDED_OPTIONS]
    ptx_path = tmp_path / (source.stem + ".ptx")
    command = [nvcc, "-ptx", *options, str(unit), "-o", str(ptx_path)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    log_text = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        pytest.fail(f"nvcc failed to compile {source.name} with {options}:\n{log_text}", pytrace=False)
    _fail_on_source_warnings(source, log_text, "nvcc")
    ptx_text = ptx_path.read_text()
    entries = re.findall(r"\.entry\s+(\w+)", ptx_text)
    assert len(set(entries)) >= len(expressions), f"expected {len(expressions)} kernels, PTX has {entries}"
    return ptx_text


def _fail_on_source_warnings(source: Path, log: str, tool: str) -> None:
    warnings = [line for line in log.splitlines() if source.name in line and "warning" in line.lower()]
    if warnings:
        pytest.fail(f"{tool} warns about {source.name}:\n{log}", pytrace=False)


def _check_includes(source: Path) -> None:
    """NVRTC has no system headers here: a source may include only the headers shipped beside it."""
    for line in re.findall(r"^\s*#\s*include.*$", source.read_text(), flags=re.MULTILINE):
        name = re.fullmatch(r'\s*#\s*include\s+"([\w.]+)"\s*', line)
        assert name, f"{source.name}: may include only quoted local headers, found {line!r}"
        assert (source.parent / name.group(1)).is_file(), f"{source.name}: {line!r} is not beside it"


def test_launch_constants_defined_once() -> None:
    """The launch constants come from pyprune.ops.cuda as -D options; no CUDA source may define its own."""
    headers = sorted(SOURCES[0].parent.glob("*.cuh")) if SOURCES else []
    for path in [*SOURCES, *headers]:
        for name in _cuda.LAUNCH_CONSTANTS:
            assert not re.search(rf"^\s*#\s*define\s+{name}\b", path.read_text(), flags=re.MULTILINE), (
                f"{path.name} defines {name}, which pyprune.ops.cuda.LAUNCH_CONSTANTS passes as -D{name}"
            )
    options = _cuda.nvrtc_options(SOURCES[0].parent)
    for name, value in _cuda.LAUNCH_CONSTANTS.items():
        assert f"-D{name}={value}" in options


def test_sensitivity_threshold_is_float32_epsilon() -> None:
    """The denominator threshold of sensitivity.cu is the EPSILON of pyprune.ops.sensitivity (FLT_EPSILON)."""
    from pyprune.ops.sensitivity import EPSILON

    source = next(p for p in SOURCES if p.stem == "sensitivity").read_text()
    value = re.search(r"^#define PP_SENS_EPS (\S+)", source, flags=re.MULTILINE).group(1)
    assert float.fromhex(value) == EPSILON


def test_common_header_ships_with_sources() -> None:
    """CMake installs every .cu and .cuh beside the module, and the sdist includes them."""
    root = Path(__file__).resolve().parents[1]
    assert (root / "csrc" / "cuda" / _cuda.COMMON_HEADER).is_file()
    assert re.search(r"GLOB\s+\w+\s+[^)]*csrc/cuda/\*\.cuh", (root / "CMakeLists.txt").read_text())
    assert '"csrc/cuda/*.cuh"' in (root / "pyproject.toml").read_text()


def test_sources_found_and_registered() -> None:
    assert SOURCES, "no csrc/cuda/*.cu found by pyprune.ops.cuda.cuda_sources()"
    assert {p.stem for p in SOURCES} == set(_cuda.NAME_EXPRESSIONS), (
        "every .cu file needs its name expressions in pyprune.ops.cuda.NAME_EXPRESSIONS (and vice versa)"
    )


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_cuda_source_compiles(source: Path, tmp_path: Path) -> None:
    which, reason = compiler()
    if not which:
        if _in_ci():
            pytest.fail(f"no CUDA compiler under CI=true: {reason}", pytrace=False)
        pytest.skip(f"no CUDA compiler: {reason}")
    _check_includes(source)
    expressions = _cuda.NAME_EXPRESSIONS.get(source.stem, ())
    if which == "nvrtc":
        ptx = _compile_with_nvrtc_in_child(source, expressions)
    else:
        ptx = compile_with_nvcc(source, expressions, tmp_path)
    assert ".entry" in ptx, f"{source.name} defines no kernel"
