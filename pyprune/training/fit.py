"""Training and evaluation loops that keep pruning masks enforced, single-process or under ``torchrun``.

:func:`fit` trains for a number of epochs (or optimiser steps) and returns a :class:`History` of per-epoch
records; :func:`evaluate` measures loss and accuracy over a loader. Both are plain loops meant to be read.

Masks. A weight pruned with ``torch.nn.utils.prune`` (every pyprune mask) is computed as
``weight = weight_orig * weight_mask`` on each forward pass, so the *effective* weight is zero where the mask is.
The stored ``weight_orig`` is another matter: weight decay and momentum keep moving it where the mask is zero (the
code of Ansuini et al. lets pruned weights drift this way), and a later ``prune.remove`` or a rewound mask would
bring the drifted values back. :func:`fit` therefore multiplies every masked ``*_orig`` gradient by its mask after
``backward()`` and every ``*_orig`` parameter by its mask after each optimiser step (:class:`MaskEnforcer`), so
that a pruned weight is exactly zero in the parameter as well as in the forward pass.

Distributed. Under ``torchrun`` with a :class:`~torch.nn.parallel.DistributedDataParallel` model and a
:class:`~torch.utils.data.distributed.DistributedSampler` (ranks see disjoint data), the same calls work:
epoch metrics and :func:`evaluate`'s sums are all-reduced over ranks, the sampler's epoch is set every epoch,
and only rank 0 shows progress bars. Saving is the caller's job; :func:`is_main_process` says where to do it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.utils import prune
from tqdm.auto import tqdm

from pyprune.activations import eval_mode, model_device
from pyprune.distributed import all_reduce, is_distributed, unwrap_model

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class EpochRecord:
    """What one epoch of :func:`fit` measured.

    Attributes:
        epoch: 1-based epoch number.
        steps: optimiser steps taken in this epoch.
        train_loss: mean training loss over the epoch's samples (over all ranks when distributed).
        train_accuracy: fraction of training samples classified correctly (argmax over dim 1), or ``None``
            when the targets are not class indices.
        val_loss, val_accuracy: :func:`evaluate` on ``val_loader`` after the epoch, or ``None`` without one.
        lr: learning rate of the first parameter group at the end of the epoch.
        seconds: wall time of the epoch, validation included.
    """

    epoch: int
    steps: int
    train_loss: float
    train_accuracy: float | None
    val_loss: float | None
    val_accuracy: float | None
    lr: float
    seconds: float


@dataclass
class History:
    """Per-epoch records of a :func:`fit` run.

    Attributes:
        epochs: one :class:`EpochRecord` per epoch run.
        steps: optimiser steps taken in all.
        stopped_early: True if early stopping ended the run.
        best_epoch: the epoch early stopping judged best (its weights are restored when it asks), else ``None``.
    """

    epochs: list[EpochRecord] = field(default_factory=list)
    steps: int = 0
    stopped_early: bool = False
    best_epoch: int | None = None

    @property
    def last(self) -> EpochRecord | None:
        """The last epoch's record, ``None`` before the first epoch ends."""
        return self.epochs[-1] if self.epochs else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"epochs": [record dicts], "steps", "stopped_early", "best_epoch"}``."""
        return {
            "epochs": [asdict(record) for record in self.epochs],
            "steps": self.steps,
            "stopped_early": self.stopped_early,
            "best_epoch": self.best_epoch,
        }


class EarlyStopping:
    """Stop :func:`fit` when a monitored metric has not improved for ``patience`` epochs.

    The default monitors the validation loss.

    Args:
        monitor: an :class:`EpochRecord` field: ``"val_loss"``, ``"val_accuracy"``, ``"train_loss"`` or
            ``"train_accuracy"``.
        patience: epochs without improvement tolerated before stopping, >= 1.
        min_delta: an improvement must exceed this, >= 0 (in the metric's units).
        mode: ``"min"`` or ``"max"``; by default ``"max"`` for accuracies and ``"min"`` for losses.
        restore_best: load the best epoch's weights back into the model when the run ends.
    """

    _FIELDS = ("val_loss", "val_accuracy", "train_loss", "train_accuracy")

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 5,
        min_delta: float = 0.0,
        mode: str | None = None,
        restore_best: bool = True,
    ) -> None:
        if monitor not in self._FIELDS:
            raise ValueError(f"monitor: expected one of {', '.join(self._FIELDS)}, got {monitor!r}")
        if not (isinstance(patience, int) and patience >= 1):
            raise ValueError(f"patience: expected an int >= 1, got {patience!r}")
        if not (math.isfinite(min_delta) and min_delta >= 0):
            raise ValueError(f"min_delta: expected a finite number >= 0, got {min_delta!r}")
        mode = mode or ("max" if monitor.endswith("accuracy") else "min")
        if mode not in ("min", "max"):
            raise ValueError(f"mode: expected 'min' or 'max', got {mode!r}")
        self.monitor, self.patience, self.min_delta, self.mode = monitor, patience, min_delta, mode
        self.restore_best = restore_best
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self._waited = 0

    def update(self, record: EpochRecord, model: nn.Module) -> bool:
        """Take the epoch's ``record`` into account; True when training should stop."""
        value = getattr(record, self.monitor)
        if value is None:
            raise ValueError(
                f"early_stopping: monitors {self.monitor!r}, which this run does not measure"
                + (" (pass val_loader to fit)" if self.monitor.startswith("val") else "")
            )
        sign = 1.0 if self.mode == "max" else -1.0
        if self.best is None or sign * (value - self.best) > self.min_delta:
            self.best, self.best_epoch, self._waited = value, record.epoch, 0
            if self.restore_best:
                self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return False
        self._waited += 1
        return self._waited >= self.patience


class Callback:
    """Hooks into :func:`fit`; subclass and override what you need (the defaults do nothing).

    ``on_epoch_end`` may return True to stop training after that epoch.
    """

    def on_batch_end(self, model: nn.Module, step: int, loss: float) -> None:
        """After the optimiser step of global step ``step`` (1-based); ``loss`` is this rank's batch loss."""

    def on_epoch_end(self, model: nn.Module, record: EpochRecord) -> bool | None:
        """After validation of each epoch."""


class MaskEnforcer:
    """Keeps the ``*_orig`` parameters of ``torch.nn.utils.prune`` masks at zero where their mask is zero.

    The masks are looked up at construction; call :meth:`mask_gradients` after ``backward()`` and
    :meth:`mask_parameters` after ``optimizer.step()``. A model without masks costs nothing.
    """

    def __init__(self, model: nn.Module) -> None:
        self.pairs: list[tuple[nn.Parameter, torch.Tensor]] = []
        for module in unwrap_model(model).modules():
            for hook in module._forward_pre_hooks.values():
                if isinstance(hook, prune.BasePruningMethod):
                    name = hook._tensor_name
                    self.pairs.append((getattr(module, f"{name}_orig"), getattr(module, f"{name}_mask")))

    def mask_gradients(self) -> None:
        for param, mask in self.pairs:
            if param.grad is not None:
                param.grad.mul_(mask)

    @torch.no_grad()
    def mask_parameters(self) -> None:
        for param, mask in self.pairs:
            param.mul_(mask)


def enforce_masks(model: nn.Module) -> MaskEnforcer:
    """Zero every ``*_orig`` entry of ``model`` whose prune mask is zero now, and return the enforcer.

    Use it in your own training loop: ``enforcer = enforce_masks(model)``, then ``enforcer.mask_gradients()``
    after ``backward()`` and ``enforcer.mask_parameters()`` after ``optimizer.step()``. :func:`fit` does this.
    """
    enforcer = MaskEnforcer(model)
    enforcer.mask_parameters()
    return enforcer


def default_optimizer(model: nn.Module, lr: float = 0.01) -> torch.optim.Optimizer:
    """SGD with momentum 0.9 over ``model``'s parameters: :func:`fit`'s optimizer when none is given."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)


def is_main_process() -> bool:
    """True unless this is a rank other than 0 of an initialised ``torch.distributed`` process group."""
    return not is_distributed() or dist.get_rank() == 0


def fit(
    model: nn.Module,
    train_loader: Iterable[Any],
    epochs: int,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    loss_fn: LossFn | None = None,
    device: torch.device | str | None = None,
    val_loader: Iterable[Any] | None = None,
    early_stopping: EarlyStopping | None = None,
    callbacks: Sequence[Callback] = (),
    amp: bool = False,
    max_steps: int | None = None,
    scheduler_step: str = "epoch",
    grad_clip: float | None = None,
    progress: bool = True,
) -> History:
    """Train ``model`` on ``train_loader`` for ``epochs`` epochs, keeping its pruning masks enforced.

    Each step: forward in train mode, ``loss_fn(output, targets)``, backward, masked gradients, optional gradient
    clipping, optimiser step, masked parameters (see the module docstring). The model is left in train mode.

    Args:
        model: the model, or a ``DistributedDataParallel`` wrapper of it.
        train_loader: a DataLoader, or any iterable (re-iterable once per epoch) of ``(inputs, targets, ...)``
            batches; tensors are moved to ``device``.
        epochs: number of passes over ``train_loader``, >= 1.
        optimizer: default :func:`default_optimizer` (SGD, lr 0.01, momentum 0.9). Pass a fresh one to rewind
            the learning rate (the optimiser's state is part of what a schedule rewinds).
        scheduler: a learning-rate scheduler, stepped after every epoch (``scheduler_step="epoch"``) or after
            every optimiser step (``"step"``). ``ReduceLROnPlateau`` is stepped with the epoch's validation loss
            (the training loss without ``val_loader``).
        loss_fn: ``loss_fn(output, targets) -> scalar``; default cross-entropy averaged over the batch.
        device: where to train; default the device of the model's first parameter.
        val_loader: evaluated after every epoch (:func:`evaluate`).
        early_stopping: an :class:`EarlyStopping`; needs ``val_loader`` when it monitors a validation metric.
        callbacks: :class:`Callback` objects.
        amp: mixed precision: float16 autocast with a gradient scaler on CUDA, bfloat16 autocast on CPU.
        max_steps: stop after this many optimiser steps in all (possibly within an epoch).
        scheduler_step: ``"epoch"`` or ``"step"``, see ``scheduler``.
        grad_clip: clip the gradients' global L2 norm to this value before each step.
        progress: show a tqdm bar per epoch (rank 0 only).

    Returns:
        The :class:`History`.

    Raises:
        ValueError: a bad ``epochs``, ``max_steps``, ``scheduler_step`` or ``grad_clip``, ``early_stopping`` on a
            validation metric without ``val_loader`` (before any training), an empty ``train_loader``, or a
            non-finite training loss (the step that produced it is not applied).
    """
    if not (isinstance(epochs, int) and epochs >= 1):
        raise ValueError(f"epochs: expected an int >= 1, got {epochs!r}")
    if max_steps is not None and not (isinstance(max_steps, int) and max_steps >= 1):
        raise ValueError(f"max_steps: expected None or an int >= 1, got {max_steps!r}")
    if scheduler_step not in ("epoch", "step"):
        raise ValueError(f"scheduler_step: expected 'epoch' or 'step', got {scheduler_step!r}")
    if grad_clip is not None and not (math.isfinite(grad_clip) and grad_clip > 0):
        raise ValueError(f"grad_clip: expected None or a finite number > 0, got {grad_clip!r}")
    if early_stopping is not None and early_stopping.monitor.startswith("val") and val_loader is None:
        # Checked up front: otherwise a whole epoch would train (changing the model) before the error.
        raise ValueError(
            f"early_stopping: monitors {early_stopping.monitor!r}, which needs val_loader (pass val_loader to fit)"
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    device = torch.device(device) if device is not None else model_device(model)
    model.to(device)
    loss_fn = loss_fn or nn.functional.cross_entropy
    optimizer = optimizer or default_optimizer(model)
    scaler = torch.amp.GradScaler("cuda") if amp and device.type == "cuda" else None
    enforcer = enforce_masks(model)
    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    history = History()
    main = is_main_process()

    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        sampler = getattr(train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch - 1)  # DistributedSampler reshuffles per epoch only when told the epoch
        model.train()
        totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, samples
        accuracy_known = True
        steps = 0
        bar = tqdm(
            train_loader,
            desc=f"epoch {epoch}/{epochs}",
            disable=not (progress and main),
            leave=False,
            unit="batch",
        )
        for batch in bar:
            inputs, targets = _split_batch(batch, device)
            optimizer.zero_grad(set_to_none=True)
            with _autocast(amp, device):
                output = model(inputs)
                loss = loss_fn(output, targets)
            if not torch.isfinite(loss):
                raise ValueError(
                    f"fit: the training loss is {loss.item()} at epoch {epoch}, step {history.steps + 1} "
                    "(lower the learning rate, or check the data for NaN/inf)"
                )
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            enforcer.mask_gradients()
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            enforcer.mask_parameters()
            if scheduler is not None and scheduler_step == "step" and not plateau:
                scheduler.step()
            steps += 1
            history.steps += 1

            n = len(targets)
            totals[0] += loss.item() * n
            totals[2] += n
            correct = _correct(output, targets)
            accuracy_known &= correct is not None
            totals[1] += correct or 0
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
            for callback in callbacks:
                callback.on_batch_end(model, history.steps, loss.item())
            if max_steps is not None and history.steps >= max_steps:
                break
        bar.close()
        if steps == 0:
            raise ValueError("train_loader: expected at least one batch, got none")
        totals = _all_reduce(totals, device)
        record = EpochRecord(
            epoch=epoch,
            steps=steps,
            train_loss=float(totals[0] / totals[2]),
            train_accuracy=float(totals[1] / totals[2]) if accuracy_known else None,
            val_loss=None,
            val_accuracy=None,
            lr=0.0,
            seconds=0.0,
        )
        if val_loader is not None:
            measured = evaluate(model, val_loader, loss_fn=loss_fn, device=device)
            record.val_loss, record.val_accuracy = measured["loss"], measured["accuracy"]
            model.train()
        if scheduler is not None and plateau:
            scheduler.step(record.val_loss if record.val_loss is not None else record.train_loss)
        elif scheduler is not None and scheduler_step == "epoch":
            scheduler.step()
        record.lr = float(optimizer.param_groups[0]["lr"])
        record.seconds = time.perf_counter() - start
        history.epochs.append(record)

        # Every callback sees every epoch, so no short-circuit: collect the answers first.
        answers = [callback.on_epoch_end(model, record) for callback in callbacks]
        stop = any(answers)
        if early_stopping is not None and early_stopping.update(record, unwrap_model(model)):
            history.stopped_early = True
            stop = True
        if stop or (max_steps is not None and history.steps >= max_steps):
            break

    if early_stopping is not None and early_stopping.best_epoch is not None:
        history.best_epoch = early_stopping.best_epoch
        if early_stopping.restore_best and early_stopping.best_state is not None:
            unwrap_model(model).load_state_dict(early_stopping.best_state)
    return history


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    loss_fn: LossFn | None = None,
    device: torch.device | str | None = None,
    max_batches: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Mean loss and accuracy of ``model`` over ``loader``, in eval mode without gradients.

    The model's training flags are restored afterwards. Distributed: sums are all-reduced, so every rank gets
    the metrics of the whole (sharded) data.

    Args:
        loss_fn: ``loss_fn(output, targets)`` returning the *mean* over the batch; default cross-entropy.
        max_batches: stop after this many batches.

    Returns:
        ``{"loss": mean loss per sample, "accuracy": fraction correct (argmax over dim 1) or None when targets
        are not class indices, "n": samples seen}``.

    Raises:
        ValueError: ``loader`` yields no batch, or a bad ``max_batches``.
    """
    if max_batches is not None and not (isinstance(max_batches, int) and max_batches >= 1):
        raise ValueError(f"max_batches: expected None or an int >= 1, got {max_batches!r}")
    device = torch.device(device) if device is not None else model_device(model)
    loss_fn = loss_fn or nn.functional.cross_entropy
    totals = torch.zeros(3, dtype=torch.float64)
    accuracy_known = True
    batches = 0
    with eval_mode(model):
        for batch in tqdm(loader, desc="evaluate", disable=not (progress and is_main_process()), leave=False):
            inputs, targets = _split_batch(batch, device)
            output = model(inputs)
            n = len(targets)
            totals[0] += float(loss_fn(output, targets)) * n
            totals[2] += n
            correct = _correct(output, targets)
            accuracy_known &= correct is not None
            totals[1] += correct or 0
            batches += 1
            if max_batches is not None and batches >= max_batches:
                break
    if batches == 0:
        raise ValueError("loader: expected at least one batch, got none")
    totals = _all_reduce(totals, device)
    return {
        "loss": float(totals[0] / totals[2]),
        "accuracy": float(totals[1] / totals[2]) if accuracy_known else None,
        "n": int(totals[2]),
    }


def _split_batch(batch: Any, device: torch.device) -> tuple[Any, torch.Tensor]:
    if not (isinstance(batch, Sequence) and len(batch) >= 2):
        raise ValueError(
            f"loader: expected batches of (inputs, targets, ...), got a {type(batch).__name__}"
            + (f" of length {len(batch)}" if isinstance(batch, Sequence) else "")
        )
    inputs, targets = batch[0], batch[1]
    return inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)


def _correct(output: torch.Tensor, targets: torch.Tensor) -> int | None:
    """Correct argmax predictions in the batch, or None when the targets are not class indices."""
    if targets.dtype in (torch.int64, torch.int32) and output.ndim == 2 and targets.ndim == 1:
        return int((output.argmax(dim=1) == targets).sum())
    return None


def _all_reduce(totals: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``totals`` (CPU float64) summed over ranks; under NCCL reduced on the training ``device``."""
    if not is_distributed():
        return totals
    # all_reduce runs NCCL collectives on its input's CUDA device: the model's, not whichever is current.
    (reduced,) = all_reduce([totals.to(device)], "sum")
    return reduced.cpu()


def _autocast(amp: bool, device: torch.device) -> Any:
    if not amp:
        return nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of ``model.state_dict()`` (for rewinding); tensors stay on their devices."""
    return {k: v.detach().clone() for k, v in unwrap_model(model).state_dict().items()}


__all__ = [
    "Callback",
    "EarlyStopping",
    "EpochRecord",
    "History",
    "MaskEnforcer",
    "default_optimizer",
    "enforce_masks",
    "evaluate",
    "fit",
    "is_main_process",
    "model_device",
    "snapshot",
]
