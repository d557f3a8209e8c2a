"""The GPU suite's rehearsal and the CUDA host helpers that need no GPU.

``benchmarks/gpu_suite.py --dry-run`` runs every section with tiny sizes on the CPU, so that a device session
(minutes, rarely lent) is never spent on an import error or a shape mistake.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from pyprune.ops import cuda as _cuda

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_suite_dry_run(tmp_path: Path) -> None:
    pytest.importorskip("torch_cka")
    pytest.importorskip("cka")  # pytorch-cka
    pytest.importorskip("timm")
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_suite.py", "--dry-run", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    for name in ("cka_matrix", "sensitivity", "cka_damage", "structured"):
        markdown = (tmp_path / f"{name}_cuda.md").read_text()
        assert "Dry run on CPU" in markdown
        assert "error:" not in markdown, markdown  # a failed step's row (the run's exit code says so too)
        assert (tmp_path / f"{name}_cuda.json").is_file()


class _NewStream:
    """CuPy 14's side: ``Stream.from_external`` takes an object with ``__cuda_stream__``."""

    @classmethod
    def from_external(cls, obj: object) -> tuple[str, tuple[int, int]]:
        return ("from_external", obj.__cuda_stream__())


def test_cupy_stream_uses_the_stream_protocol_when_cupy_has_it() -> None:
    torch_stream = SimpleNamespace(cuda_stream=0x1234, device_index=3)
    new = SimpleNamespace(cuda=SimpleNamespace(Stream=_NewStream, ExternalStream=None))
    assert _cuda.cupy_stream(new, torch_stream) == ("from_external", (0, 0x1234))
    old = SimpleNamespace(
        cuda=SimpleNamespace(Stream=object, ExternalStream=lambda ptr, device: ("external", ptr, device))
    )
    assert _cuda.cupy_stream(old, torch_stream) == ("external", 0x1234, 3)


def test_nvrtc_options_need_the_common_header(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"pp_common\.cuh"):
        _cuda.nvrtc_options(tmp_path)
    (tmp_path / _cuda.COMMON_HEADER).write_text("// v1\n")
    first = _cuda.nvrtc_options(tmp_path)
    assert f"-I{tmp_path}" in first
    (tmp_path / _cuda.COMMON_HEADER).write_text("// v2\n")
    # CuPy's kernel cache keys on the options: an edited header must change them.
    assert _cuda.nvrtc_options(tmp_path) != first
