"""Record the outputs of chosen layers of a PyTorch model over a data set, for similarity analysis.

:func:`capture` returns every activation at once; :func:`iterate_activations` yields them one batch at a time
for streaming metrics (:class:`pyprune.similarity.MinibatchCKA`). Both run the model in eval mode under
``torch.no_grad()`` and touch the model only for the duration of each forward pass: forward hooks are
registered before the pass and removed right after it (also when it raises), and every module's ``training``
flag is restored, so a suspended or abandoned generator leaves the model exactly as it found it.

Layers are chosen by module name (as in ``model.named_modules()``), by a predicate ``(name, module) -> bool``
or by module type(s). A module's activation is its forward output; for modules returning a tuple, list or
dict (``nn.LSTM``, ``nn.MultiheadAttention``, ...) it is the first tensor found depth-first in the output.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from pyprune.arguments import close_matches_hint
from pyprune.similarity._inputs import FLATTEN_MODES, Flatten, flatten_activations

LayerSelector = str | Sequence[str] | Callable[[str, nn.Module], bool] | type | tuple[type, ...]
"""Module names, a predicate ``(name, module) -> bool``, or a module type / tuple of types."""

INPUT_KEYS = ("x", "input", "inputs")
"""Keys under which a dict batch holds the model input, tried in this order."""


def resolve_layers(model: nn.Module, layers: LayerSelector) -> list[tuple[str, nn.Module]]:
    """The ``(name, module)`` pairs of ``model`` selected by ``layers``.

    Names keep the order given; predicates and types select in ``model.named_modules()`` order (definition
    order, which for most models is also execution order).

    Raises:
        ValueError: an unknown or repeated name (the message suggests close valid names), or nothing selected.
        TypeError: ``layers`` is none of the accepted forms.
    """
    if isinstance(layers, nn.Module):
        # Modules are callable, so without this check one would be mistaken for a predicate.
        raise TypeError("layers: got a module; pass its name as in model.named_modules() instead")
    if isinstance(layers, type) or (
        isinstance(layers, tuple) and layers and all(isinstance(t, type) for t in layers)
    ):
        selected = [(name, m) for name, m in model.named_modules() if isinstance(m, layers)]
        what = f"of type {_type_names(layers)}"
    elif callable(layers):
        selected = [(name, m) for name, m in model.named_modules() if layers(name, m)]
        what = "matching the predicate"
    else:
        selected = _select_by_name(model, layers)
        what = "named"
    if not selected:
        available = _short_list([name for name, _ in model.named_modules() if name])
        raise ValueError(f"layers: no module of {type(model).__name__} {what}; its modules are {available}")
    return selected


def _select_by_name(model: nn.Module, layers: Any) -> list[tuple[str, nn.Module]]:
    names = [layers] if isinstance(layers, str) else list(layers) if isinstance(layers, Iterable) else None
    if names is None or not all(isinstance(n, str) for n in names):
        raise TypeError(
            "layers: expected module names (a list of str), a predicate (name, module) -> bool, or module "
            f"type(s), got {type(layers).__name__}"
        )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"layers: each name may appear once, got repeats of {repeated}")
    # remove_duplicate=False so every path to a shared module is a valid name.
    modules = dict(model.named_modules(remove_duplicate=False))
    unknown = [n for n in names if n not in modules]
    if unknown:
        valid = [n for n in modules if n]
        hints = []
        for name in unknown:
            hints.append(repr(name) + close_matches_hint(name, valid))
        raise ValueError(
            f"layers: unknown module name(s) in {type(model).__name__}: {'; '.join(hints)}. "
            f"Valid names (from model.named_modules()) include {_short_list(valid)}"
        )
    return [(n, modules[n]) for n in names]


def _type_names(types: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))


def _short_list(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(map(repr, names[:limit]))
    return f"[{shown}, ... ({len(names) - limit} more)]" if len(names) > limit else f"[{shown}]"


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model with neither."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def call_model(model: Callable[..., Any], inputs: Any) -> Any:
    """``model(inputs)`` for a tensor, ``model(*inputs)`` for a tuple/list, ``model(**inputs)`` for a dict
    (Hugging Face style ``input_ids`` / ``attention_mask`` / ``pixel_values``)."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def batch_input(batch: Any, input_key: str | None = None) -> Any:
    """The model input of one batch: the batch itself if a tensor, else its first element (tuple or list); for a
    dict, its ``input_key`` entry if given, else its ``"x"`` / ``"input"`` / ``"inputs"`` entry, else the whole
    dict (fed as keyword arguments: ``input_ids``, ``attention_mask``, ``pixel_values``...)."""
    if isinstance(batch, Mapping):
        if input_key is not None:
            if input_key not in batch:
                raise ValueError(
                    f"input_key: a dict batch has no key {input_key!r}; its keys are {list(batch)}"
                )
            x = batch[input_key]
        else:
            key = next((k for k in INPUT_KEYS if k in batch), None)
            if key is None:
                return _keyword_batch(batch)
            x = batch[key]
    elif isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError("data: got an empty batch")
        x = batch[0]
        if isinstance(x, Mapping):
            return _keyword_batch(x)
    else:
        x = batch
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"data: expected batches whose input is a tensor or a dict, got {type(x).__name__}")
    if x.ndim == 0:
        raise ValueError("data: expected batch inputs with a leading batch dimension, got a 0-d tensor")
    return x


def _keyword_batch(batch: Mapping[str, Any]) -> dict[str, Any]:
    if not any(isinstance(v, torch.Tensor) and v.ndim > 0 for v in batch.values()):
        raise ValueError(f"data: a dict batch needs at least one batched tensor, got keys {list(batch)}")
    return dict(batch)


def batch_size_of(x: Any) -> int:
    """Samples in a model input: the leading dim of a tensor, or of the first batched tensor of a dict."""
    if isinstance(x, torch.Tensor):
        return x.shape[0]
    return next(v.shape[0] for v in x.values() if isinstance(v, torch.Tensor) and v.ndim > 0)


def _take(x: Any, n: int) -> Any:
    return _slice(x, 0, n)


def _slice(x: Any, start: int, stop: int) -> Any:
    """Samples ``start:stop`` of a tensor input, or of every batched tensor of a dict input."""
    if isinstance(x, torch.Tensor):
        return x[start:stop]
    return {k: v[start:stop] if isinstance(v, torch.Tensor) and v.ndim > 0 else v for k, v in x.items()}


def to_device(x: Any, device: torch.device) -> Any:
    """A model input (tensor or dict of tensors) on ``device``."""
    if isinstance(x, Mapping):
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in x.items()}
    return x.to(device)


def input_batches(
    data: Any, batch_size: int = 256, max_samples: int | None = None, input_key: str | None = None
) -> Iterator[Any]:
    """The model inputs in ``data``, batch by batch, stopping after ``max_samples`` (last batch cut short).

    ``data`` is a tensor or array ``(n, ...)`` (split into batches of ``batch_size``), a ``DataLoader`` or any
    iterable of batches (see :func:`batch_input`; ``input_key`` picks a dict batch's entry); empty batches are
    skipped. Arguments are checked at the call, not at the first ``next()``.
    """
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    if max_samples is not None and not (isinstance(max_samples, int) and max_samples >= 1):
        raise ValueError(f"max_samples: expected None or an int >= 1, got {max_samples!r}")
    if isinstance(data, np.ndarray):
        # Iterating an array would yield single rows as "batches"; treat it like a tensor instead.
        data = torch.from_numpy(data)
    if isinstance(data, torch.Tensor):
        if data.ndim == 0:
            raise ValueError("data: expected a tensor with a leading sample dimension, got a 0-d tensor")
        return iter(data[:max_samples].split(batch_size))
    if isinstance(data, Mapping):
        # One dict of tensors holding every sample: batches of batch_size, like a tensor.
        whole = batch_input(data, input_key)
        n = batch_size_of(whole) if max_samples is None else min(batch_size_of(whole), max_samples)
        return (_slice(whole, i, min(i + batch_size, n)) for i in range(0, n, batch_size))
    if not isinstance(data, Iterable):
        raise TypeError(
            f"data: expected a tensor, a DataLoader or an iterable of batches, got {type(data).__name__}"
        )
    return _iterable_batches(data, max_samples, input_key)


def _iterable_batches(data: Iterable[Any], max_samples: int | None, input_key: str | None) -> Iterator[Any]:
    remaining = math.inf if max_samples is None else max_samples
    for batch in data:
        x = batch_input(batch, input_key)
        size = batch_size_of(x)
        if size == 0:
            continue
        if size > remaining:
            x = _take(x, int(remaining))
            size = int(remaining)
        yield x
        remaining -= size
        if remaining <= 0:
            return


def count_samples(data: Any, max_samples: int | None = None) -> int | None:
    """How many samples :func:`input_batches` will yield, where known in advance (for progress bars)."""
    if isinstance(data, (torch.Tensor, np.ndarray)) and data.ndim > 0:
        n = data.shape[0]
    elif isinstance(data, torch.utils.data.DataLoader) and not data.drop_last:
        try:
            n = len(data.sampler)
        except TypeError:  # an IterableDataset has no length
            return max_samples
    else:
        return max_samples
    return n if max_samples is None else min(n, max_samples)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode; restore every submodule's own ``training`` flag on exit."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag


def first_tensor(output: Any) -> torch.Tensor | None:
    """The first tensor in a module output, searching tuples, lists and dict values depth-first."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        output = list(output.values())
    if not isinstance(output, (tuple, list)):
        return None
    for item in output:
        found = first_tensor(item)
        if found is not None:
            return found
    return None


def _record_output(
    store: dict[str, torch.Tensor], name: str, to_cpu: bool, module: nn.Module, args: Any, output: Any
) -> None:
    if name in store:
        # A module reused within one forward (e.g. a shared ReLU in torchvision's ResNet blocks) has no single
        # activation; keeping either call silently would mislabel the layer.
        raise ValueError(
            f"layers: module {name!r} ({type(module).__name__}) ran more than once in one forward pass, so "
            "its output is ambiguous; select a module that runs once (e.g. the enclosing block)"
        )
    tensor = first_tensor(output)
    if tensor is None:
        raise TypeError(f"layers: module {name!r} returned {type(output).__name__}, which contains no tensor")
    # Always a copy: a later in-place op (ReLU(inplace=True) after a conv, as in torchvision's ResNets) would
    # otherwise overwrite the recorded output with the next layer's.
    store[name] = tensor.detach().to("cpu", copy=True) if to_cpu else tensor.detach().clone()


class LayerRecorder:
    """Runs one model on input batches and returns the chosen layers' outputs.

    Hooks exist only during :meth:`__call__`; between calls the model is untouched.

    Args:
        model: the network.
        layers: which modules to record, see :func:`resolve_layers`.
        device: where inputs go (default: the model's device).
        to_cpu: copy activations to the CPU (else they stay where the model computed them).
        flatten: None to keep activation shapes, or ``"example"`` / ``"channel"`` for 2-D outputs, see
            :func:`pyprune.flatten_activations`.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: LayerSelector,
        *,
        device: torch.device | str | None = None,
        to_cpu: bool = True,
        flatten: Flatten | None = None,
        forward: Callable[[nn.Module, Any], Any] | None = None,
    ) -> None:
        if flatten is not None and flatten not in FLATTEN_MODES:
            raise ValueError(f"flatten: expected None or one of {FLATTEN_MODES}, got {flatten!r}")
        if forward is not None and not callable(forward):
            raise TypeError(f"forward: expected None or a callable (model, input) -> output, got {forward!r}")
        self.forward = forward
        self.model = model
        self.targets = resolve_layers(model, layers)
        self.device = torch.device(device) if device is not None else model_device(model)
        self.to_cpu = to_cpu
        self.flatten = flatten

    @property
    def names(self) -> list[str]:
        """The recorded module names, in output order."""
        return [name for name, _ in self.targets]

    def __call__(self, x: Any) -> dict[str, torch.Tensor]:
        """Forward ``x`` ``(b, ...)`` (or a dict of keyword inputs); returns ``{name: activation (b, ...)}`` (2-D if
        ``flatten`` is set)."""
        store: dict[str, torch.Tensor] = {}
        handles = []
        try:
            for name, module in self.targets:
                hook = partial(_record_output, store, name, self.to_cpu)
                handles.append(module.register_forward_hook(hook))
            with eval_mode(self.model), torch.no_grad():
                x = to_device(x, self.device)
                if self.forward is not None:
                    self.forward(self.model, x)
                elif isinstance(x, Mapping):
                    self.model(**x)
                else:
                    self.model(x)
        finally:
            for handle in handles:
                handle.remove()
        missing = [name for name in self.names if name not in store]
        if missing:
            raise ValueError(f"layers: {missing} produced no output; model.forward never called them")
        if self.flatten is None:
            return {name: store[name] for name in self.names}
        return {name: flatten_activations(store[name], self.flatten) for name in self.names}


def iterate_activations(
    model: nn.Module,
    data: Any,
    layers: LayerSelector,
    *,
    batch_size: int = 256,
    max_samples: int | None = None,
    device: torch.device | str | None = None,
    to_cpu: bool = True,
    flatten: Flatten | None = None,
    input_key: str | None = None,
    forward: Callable[[nn.Module, Any], Any] | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield the chosen layers' activations one batch at a time, for streaming metrics.

    Arguments as for :func:`capture`. Each item is ``{name: tensor (b, ...)}`` for one batch of ``b`` inputs,
    in layer order. Hooks are attached only while a batch runs, so the model is untouched while the generator
    is suspended, closed early or garbage-collected.
    """
    recorder = LayerRecorder(model, layers, device=device, to_cpu=to_cpu, flatten=flatten, forward=forward)
    # A generator expression rather than a generator function, so bad arguments raise here and not at the
    # first next().
    return (recorder(x) for x in input_batches(data, batch_size, max_samples, input_key))


def capture(
    model: nn.Module,
    data: Any,
    layers: LayerSelector,
    *,
    batch_size: int = 256,
    max_samples: int | None = None,
    device: torch.device | str | None = None,
    to_cpu: bool = True,
    flatten: Flatten | None = None,
    input_key: str | None = None,
    forward: Callable[[nn.Module, Any], Any] | None = None,
) -> dict[str, torch.Tensor]:
    """Run ``model`` over ``data`` and return the outputs of the chosen layers.

    The model runs in eval mode under ``torch.no_grad()``; its hooks are removed and every module's
    ``training`` flag restored afterwards, also when the forward pass raises.

    Args:
        model: any ``nn.Module``.
        data: a tensor or array ``(n, ...)`` of inputs (split into batches of ``batch_size``), a
            ``DataLoader`` or any iterable of batches. A batch is a tensor, a tuple/list whose first element
            is the input (``(x, y)`` pairs), or a dict: its ``"x"``, ``"input"`` or ``"inputs"`` entry is the
            input, otherwise the whole dict is passed as keyword arguments (Hugging Face style ``input_ids``,
            ``attention_mask``, ``pixel_values``). A dict of tensors holding all samples is batched too.
        layers: module names as in ``model.named_modules()`` (kept in the given order), a predicate
            ``(name, module) -> bool``, or a module type / tuple of types (both in ``named_modules()`` order).
        batch_size: batch size when ``data`` is a tensor.
        max_samples: stop after this many samples (the last batch is cut short).
        device: where inputs are sent (default: the device of the model's first parameter).
        to_cpu: copy activations to the CPU as they are produced (default); False keeps them where the model
            computed them.
        flatten: None keeps each output's shape; ``"example"`` gives ``(n, C*H*W)`` and ``"channel"``
            ``(n*H*W, C)``, see :func:`pyprune.flatten_activations`.
        input_key: feed this entry of each dict batch (e.g. ``"pixel_values"``) as the only input.
        forward: ``forward(model, input)`` runs the model instead of ``model(input)`` / ``model(**input)``
            (e.g. ``lambda m, b: m.generate(**b)`` or a model whose inputs need preparing).

    Returns:
        ``{name: tensor}`` in layer order; each tensor is ``(n, ...)``, the module's output for all ``n``
        samples concatenated, a detached copy (later in-place ops cannot change it) in the output's dtype. For modules returning a tuple, list
        or dict, the first tensor in it.

    Raises:
        ValueError: unknown names (with suggestions), no layer selected, a layer that never ran or ran twice
            in one forward pass, or ``data`` with no samples.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> acts = capture(model, torch.randn(10, 4), ["0", "2"])
        >>> {name: tuple(a.shape) for name, a in acts.items()}
        {'0': (10, 8), '2': (10, 2)}
    """
    batches: dict[str, list[torch.Tensor]] | None = None
    for acts in iterate_activations(
        model,
        data,
        layers,
        batch_size=batch_size,
        max_samples=max_samples,
        device=device,
        to_cpu=to_cpu,
        flatten=flatten,
        input_key=input_key,
        forward=forward,
    ):
        if batches is None:
            batches = {name: [] for name in acts}
        for name, tensor in acts.items():
            batches[name].append(tensor)
    captured = {name: torch.cat(parts) for name, parts in (batches or {}).items()}
    if not captured or next(iter(captured.values())).shape[0] == 0:
        raise ValueError("data: contains no samples")
    return captured
