"""The README's quick-tour snippet must keep running as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quick_tour_similarity_snippet_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    snippet = next(block for block in blocks if "pyprune.cka(x, y)" in block)
    namespace: dict = {}
    exec(compile(snippet, str(README), "exec"), namespace)
    assert 0.0 < float(namespace["pyprune"].cka(namespace["x"], namespace["y"])) <= 1.0


def test_quick_tour_pruning_snippet_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    snippet = next(block for block in blocks if "pyprune.save_pruned" in block)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(snippet, str(README), "exec"), namespace)
    model, fresh, x = namespace["model"].eval(), namespace["fresh"].eval(), namespace["x"]
    assert sum(p.numel() for p in model.parameters()) < 0.5 * sum(
        p.numel() for p in namespace["models"].resnet20().parameters()
    )
    assert namespace["torch"].equal(model(x), fresh(x))
