from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pyprune import cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_info(capsys):
    assert cli.main(["info"]) == 0
    assert "torch" in capsys.readouterr().out


def test_demo_quick_writes_heatmaps_and_json(tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    out = tmp_path / "demo"
    assert cli.main(["demo", "--quick", "--out", str(out), "--no-progress", "--seed", "3"]) == 0
    for name in ("similarity_a_vs_b.png", "similarity_a_vs_a.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    result = json.loads((out / "results.json").read_text())
    assert result["seed"] == 3
    assert result["n_test"] + result["n_train"] == 1797
    assert 0.5 < result["accuracy"]["model_a"] <= 1.0  # 2 epochs already beat chance (0.1) by far
    names = result["a_vs_b"]["names_a"]
    assert len(result["a_vs_b"]["values"]) == len(names)
    self_similarity = result["a_vs_a"]["values"]
    assert all(self_similarity[i][i] == pytest.approx(1.0) for i in range(len(names)))
    printed = capsys.readouterr().out
    assert str(out / "results.json") in printed
    assert "[1/4]" not in printed  # --no-progress


def test_demo_missing_dependency(monkeypatch, tmp_path, capsys):
    import pyprune.demo

    monkeypatch.setattr(pyprune.demo, "missing_dependencies", lambda: ["sklearn"])
    assert cli.main(["demo", "--quick", "--out", str(tmp_path / "never")]) == 1
    assert "missing sklearn; install with: pip install pyprune[demo]" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
    with pytest.raises(ImportError, match=r"pip install pyprune\[demo\]"):
        pyprune.demo.run_demo(tmp_path / "never")


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "demo" in capsys.readouterr().err


def test_version_in_process(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("pyprune ")


def test_python_dash_m_version():
    done = subprocess.run(
        [sys.executable, "-m", "pyprune", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("pyprune ")
