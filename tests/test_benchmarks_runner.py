"""The benchmarks' shared command line and results writing (``benchmarks/_runner.py``).

Every script must import and accept ``--quick`` (its smoke-test mode), and a quick run must never overwrite the
committed results in ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(path.stem for path in BENCHMARKS.glob("bench_*.py"))


@pytest.fixture(scope="module", autouse=True)
def benchmarks_importable() -> Iterator[None]:
    # The scripts import their helpers (`_runner`, `_lm`, ...) as top-level modules, as `python benchmarks/x.py`
    # does.
    sys.path.insert(0, str(BENCHMARKS))
    yield
    sys.path.remove(str(BENCHMARKS))


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_accepts_quick(name: str) -> None:
    args = importlib.import_module(name).parse_args(["--quick"])
    assert args.quick
    assert args.out is None


def test_gpu_suite_rehearses_with_dry_run() -> None:
    args = importlib.import_module("gpu_suite").parse_args(["--dry-run"])
    assert args.dry_run
    assert args.device == "cpu"
    assert args.out is None


def test_parse_fills_unset_options_for_the_mode() -> None:
    runner = importlib.import_module("_runner")
    parser = runner.benchmark_parser("test", "small")
    parser.add_argument("--size", type=int, default=None)
    assert runner.parse(parser, [], {"size": (256, 32)}).size == 256
    assert runner.parse(parser, ["--quick"], {"size": (256, 32)}).size == 32
    assert runner.parse(parser, ["--quick", "--size", "7"], {"size": (256, 32)}).size == 7


def test_publish_writes_quick_runs_only_where_told(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    runner = importlib.import_module("_runner")
    quick = argparse.Namespace(quick=True, out=None)
    assert runner.publish(quick, "demo", {"x": 1.0}, "# demo") == []
    assert "nothing written" in capsys.readouterr().out

    quick.out = tmp_path
    plotted: list[Path] = []
    paths = runner.publish(quick, "demo", {"x": float("nan")}, "# demo", plot=plotted.append)
    assert [p.name for p in paths] == ["demo_quick.json", "demo_quick.md", "demo_quick.png"]
    assert plotted == [tmp_path / "demo_quick.png"]
    assert json.loads((tmp_path / "demo_quick.json").read_text()) == {"x": None}
    assert (tmp_path / "demo_quick.md").read_text() == "# demo\n"
