"""The README's "More measures, significance, many models" snippet must keep running as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_similarity_statistics_snippet_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    snippet = next(block for block in blocks if "pyprune.similarity_test(" in block)
    namespace: dict = {}
    exec(compile(snippet, str(README), "exec"), namespace)
    result, cells = namespace["result"], namespace["cells"]
    assert result.p_value == 1 / 1001
    low, high = result.ci
    # Resampled sets hold duplicates, which inflate CKA: the percentile interval sits above the estimate.
    assert result.bootstrap_bias > 0
    assert low < result.observed + result.bootstrap_bias < high
    assert cells.p_values.shape == (2, 2)
    assert namespace["grid"].values.shape == (6, 6)
