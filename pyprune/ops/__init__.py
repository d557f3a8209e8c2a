"""pyprune's kernel layer: each op has one :class:`~pyprune.ops.spec.OpSpec` (argument checker, C++, CUDA and
torch reference implementations) and calling it picks the implementation for the arguments' device.

Layout: ``checks`` (the argument checker of every op), ``reference`` (plain-torch definitions), ``cuda`` (CuPy
launches of ``csrc/cuda``), ``backend`` (which implementation runs), ``spec`` and ``registry`` (the list of
ops), and one module per op. Dependency direction: ``csrc`` kernels <- ``pyprune.ops`` <- metrics and criteria
<- pruners <- CLI; nothing in ``pyprune.ops`` imports from the rest of pyprune.
"""

from pyprune.ops.gram import linear_gram
from pyprune.ops.gram_hsic import gram_hsic_terms
from pyprune.ops.permutation_hsic import permutation_hsic
from pyprune.ops.rbf_gram import rbf_from_linear_gram

__all__ = ["gram_hsic_terms", "linear_gram", "permutation_hsic", "rbf_from_linear_gram"]
