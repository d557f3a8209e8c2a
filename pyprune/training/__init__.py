"""Training and prune–retrain schedules: :mod:`pyprune.training.fit` (the loops that keep pruning masks enforced)
and :mod:`pyprune.training.schedules` (one-shot, iterative, IMP and cascade)."""
