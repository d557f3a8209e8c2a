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
