"""Prune–retrain schedules: one-shot, iterative channel pruning, IMP with rewinding, and cascade.

Each schedule is one function that composes the method registry (:func:`pyprune.plan`), the engine
(``plan.apply``) and :func:`pyprune.train.fit`, measures the model after every round and returns a
:class:`ScheduleResult`:

* :func:`one_shot`: prune once to ``amount``, fine-tune.
* :func:`iterative`: Molchanov et al. (2017): remove a few channels, fine-tune a few steps,
  repeat until a FLOPs or channel target; with ``method="taylor"`` the scores of the next round are accumulated
  by hooks during the fine-tuning batches, so scoring costs no extra pass.
* :func:`imp`: iterative magnitude pruning (Renda, Frankle & Carbin 2020): prune exactly
  ``floor(rate · remaining)`` weights globally per round, then retrain with learning-rate rewinding, weight
  rewinding or fine-tuning.
* :func:`cascade`: the SiPP/PFP protocol: a list of absolute keep ratios, scores recomputed on the
  current weights before each step, retraining with the full schedule at chosen steps; works with any
  registered method.

Layout. Each schedule lives in a module of its own (``one_shot_schedule``, ``iterative_schedule``, ``imp_schedule``,
``cascade_schedule``: named apart from the functions this package exports, so that no function shadows its module).
They share ``config`` (:class:`ScheduleOptions`, the keywords every schedule takes, validated once), ``session``
(resuming, seeding, planning, measuring, checkpoints), ``trainer`` (one retraining with a fresh optimiser) and
``results`` (:class:`RoundRecord`, :class:`ScheduleResult`, plots).

Rounds. Round 0 is the dense model right before the first pruning step, after whatever training the schedule
gives it first (IMP's initial training, the Taylor warm-up of :func:`iterative`); round ``k >= 1`` is the model
after the k-th pruning step and its retraining. Each :class:`RoundRecord` holds parameter and FLOP counts
(:func:`pyprune.count` on one example) and the loss and accuracy on ``eval_loader`` (:func:`pyprune.train.evaluate`).

Seeding. With ``seed`` (default 0), the global torch RNG and the ``torch.Generator`` of every loader the schedule
iterates (``train_loader``, and ``data`` when given) are reseeded at the start of every round from
``(seed, round)``. A run therefore does not depend on what ran before it, and a resumed run repeats the
uninterrupted one exactly (on the same machine and library versions). ``seed=None`` leaves every RNG alone.

Checkpoints. With ``checkpoint_dir``, each finished round ``k`` writes ``round_{k:03d}.pt``
(:func:`pyprune.save_pruned`: weights and the plans applied so far, so structurally pruned models load into a
fresh instance), ``round_{k:03d}_state.pt`` (what the schedule carries between rounds: IMP's rewind weights,
Taylor accumulators) and ``result.json`` (the :class:`ScheduleResult` so far), each written to a temporary file
and moved into place with ``os.replace``. ``resume=True`` with a freshly built model of the same architecture
continues after the last round that ``result.json`` records.

Distributed. Under ``torchrun`` every rank calls the schedule with its ``DistributedDataParallel`` model and its
``DistributedSampler`` shards: the data-driven criteria reduce their statistics over ranks, so every rank plans the
same (:mod:`pyprune.distributed`), and :func:`pyprune.train.fit` averages gradients as DDP does. A round that
removes channels replaces parameters the wrapper registered when it was built, so the schedule then wraps the
pruned module anew (:func:`pyprune.distributed.rewrap`): ``result.final_model`` is that new wrapper around the
same module, and the wrapper passed in must not be trained further. Masks change no parameter and keep the wrapper.

Failures. Planning never modifies the model and applying a plan is all-or-nothing (the engine restores the model
if it fails), so an error while pruning round ``k`` leaves the model as round ``k - 1`` left it. An error during
training leaves the model pruned and partly retrained. Either way the checkpoint directory still holds round
``k - 1`` complete, and ``resume=True`` redoes round ``k`` from there.
"""

from pyprune.training.schedules.cascade_schedule import cascade
from pyprune.training.schedules.config import ScheduleOptions
from pyprune.training.schedules.imp_schedule import REWIND_MODES, imp
from pyprune.training.schedules.iterative_schedule import iterative
from pyprune.training.schedules.one_shot_schedule import one_shot
from pyprune.training.schedules.results import RoundRecord, ScheduleResult

__all__ = [
    "REWIND_MODES",
    "RoundRecord",
    "ScheduleOptions",
    "ScheduleResult",
    "cascade",
    "imp",
    "iterative",
    "one_shot",
]
