"""Losses that layers add during a forward pass (the counterpart of Keras' ``model.losses``).

A layer records a term with :func:`set_added_loss` under a name of its own; the term **replaces**
the one that layer recorded in its previous forward, so repeated forwards never double-count.
:func:`collect_losses` sums the terms of every submodule of a model after a forward pass.

Each term is a 0-dim tensor already reduced like the data term (mean over the batch). Under
``torch.no_grad()`` the terms carry no graph. ``collect_losses(model, clear=True)`` (what the VAE
toolkit's ELBO uses, and a ``loss_fn`` given to the trainer should) also drops the stored terms,
so no graph outlives its training step.

The terms live in a small per-module store that ``copy.deepcopy``, pickling and
``torch.save`` of the module copy as empty (a recorded term holds the autograd graph of the
forward that made it, which neither can copy): ``copy.deepcopy(model)`` and
``torch.optim.swa_utils.AveragedModel(model)`` work after any forward. The library's layers
create their store in ``__init__``, so ``torch.compile`` traces the recording without a graph
break. Inside :func:`added_losses_skipped` no layer computes or records a term (what
:func:`problayers.export` uses: an exported encoder draws no sample for a KL), nor while
``torch.export`` traces a model.

Caveat: a layer applied several times in one forward keeps the term of its last call only.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator

import torch
from torch import nn

from ._state import exporting

__all__ = [
    "added_losses_enabled",
    "added_losses_skipped",
    "clear_losses",
    "collect_losses",
    "init_added_losses",
    "set_added_loss",
]

_ATTR = "_problayers_added_losses"
_LOCAL = threading.local()  # per thread: .skip, whether layers skip their added losses


class _AddedLosses:
    """A module's recorded terms, ``name -> 0-dim tensor``. Copies (``copy.copy``,
    ``copy.deepcopy``, pickle) are empty stores: the terms belong to one forward pass."""

    __slots__ = ("terms",)

    def __init__(self) -> None:
        self.terms: dict[str, torch.Tensor] = {}

    def __copy__(self) -> _AddedLosses:
        return _AddedLosses()

    def __deepcopy__(self, memo: dict) -> _AddedLosses:
        return _AddedLosses()

    def __reduce__(self) -> tuple[type[_AddedLosses], tuple[()]]:
        return _AddedLosses, ()


def init_added_losses(module: nn.Module) -> None:
    """Give ``module`` its (empty) store of added losses; call in ``__init__`` of a layer that
    records terms, so that recording under ``torch.compile`` mutates an existing object."""
    if not isinstance(module.__dict__.get(_ATTR), _AddedLosses):
        # Plain attribute (not a buffer): never saved in a state_dict.
        object.__setattr__(module, _ATTR, _AddedLosses())


def added_losses_enabled() -> bool:
    """Whether layers compute and record their added losses (False inside
    :func:`added_losses_skipped`, and while ``torch.export`` traces: an exported program does
    not return them, and the module would keep a traced fake tensor as its term)."""
    return not getattr(_LOCAL, "skip", False) and not exporting()


@contextlib.contextmanager
def added_losses_skipped() -> Iterator[None]:
    """Within the block, layers neither compute nor record added losses (e.g. while exporting
    or serving a model: no KL term, no sample drawn for it), in this thread only: another
    thread training meanwhile keeps its terms (``torch.export`` tracing in another thread does
    not: torch's flag for it is process-wide)."""
    previous = getattr(_LOCAL, "skip", False)
    _LOCAL.skip = True
    try:
        yield
    finally:
        _LOCAL.skip = previous


def set_added_loss(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Record ``value`` (a 0-dim tensor) as ``module``'s added loss ``name`` for this forward."""
    if not isinstance(value, torch.Tensor) or value.dim() != 0:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(
            f"added loss {name!r} of {type(module).__name__}: expected a 0-dim tensor, got {shape}"
        )
    store = module.__dict__.get(_ATTR)
    if store is None:
        init_added_losses(module)
        store = module.__dict__[_ATTR]
    store.terms[name] = value


def _stores(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    for module in model.modules():
        store = module.__dict__.get(_ATTR)
        if store is not None and store.terms:
            yield store.terms


def collect_losses(model: nn.Module, *, clear: bool = False) -> torch.Tensor:
    """Sum of the added losses recorded in ``model`` and all its submodules.

    Args:
        model: any ``nn.Module`` (an ``nn.Sequential``, a DDP-wrapped model, ...).
        clear: drop the recorded terms after summing them.

    Returns:
        A 0-dim tensor (zero, in the dtype and on the device of the model's first floating
        parameter or buffer, when no layer recorded a term).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"collect_losses: expected an nn.Module, got {type(model).__name__}")
    terms: list[torch.Tensor] = []
    for store in _stores(model):
        terms.extend(store.values())
        if clear:
            store.clear()
    if not terms:  # zero in the model's floating dtype, on its device
        tensors = (t for t in itertools.chain(model.parameters(), model.buffers()) if t.is_floating_point())
        ref = next(tensors, None)
        return torch.zeros(
            (), device=None if ref is None else ref.device, dtype=None if ref is None else ref.dtype
        )
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def clear_losses(model: nn.Module) -> None:
    """Drop every recorded added loss in ``model`` (and the graphs they hold)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"clear_losses: expected an nn.Module, got {type(model).__name__}")
    for store in _stores(model):
        store.clear()
