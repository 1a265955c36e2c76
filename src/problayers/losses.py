"""Losses that layers add during a forward pass (the counterpart of Keras' ``model.losses``).

A layer records a term with :func:`set_added_loss` under a name of its own; the term **replaces**
the one that layer recorded in its previous forward, so repeated forwards never double-count.
:func:`collect_losses` sums the terms of every submodule of a model after a forward pass.

Each term is a 0-dim tensor already reduced like the data term (mean over the batch). Under
``torch.no_grad()`` the terms carry no graph. ``collect_losses(model, clear=True)`` (what the
trainer uses) also drops the stored terms, so no graph outlives its training step.

Caveat: a layer applied several times in one forward keeps the term of its last call only.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["clear_losses", "collect_losses", "set_added_loss"]

_ATTR = "_problayers_added_losses"


def set_added_loss(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Record ``value`` (a 0-dim tensor) as ``module``'s added loss ``name`` for this forward."""
    if not isinstance(value, torch.Tensor) or value.dim() != 0:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(
            f"added loss {name!r} of {type(module).__name__}: expected a 0-dim tensor, got {shape}"
        )
    store = module.__dict__.get(_ATTR)
    if store is None:
        store = {}
        # Plain attribute (not a buffer): never saved in a state_dict.
        object.__setattr__(module, _ATTR, store)
    store[name] = value


def _stores(model: nn.Module):
    for module in model.modules():
        store = module.__dict__.get(_ATTR)
        if store:
            yield store


def collect_losses(model: nn.Module, *, clear: bool = False) -> torch.Tensor:
    """Sum of the added losses recorded in ``model`` and all its submodules.

    Args:
        model: any ``nn.Module`` (an ``nn.Sequential``, a DDP-wrapped model, ...).
        clear: drop the recorded terms after summing them.

    Returns:
        A 0-dim tensor (zero, on the model's device, when no layer recorded a term).
    """
    terms = []
    for store in _stores(model):
        terms.extend(store.values())
        if clear:
            store.clear()
    if not terms:
        ref = next(model.parameters(), None)
        return torch.zeros((), device=ref.device if ref is not None else None)
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def clear_losses(model: nn.Module) -> None:
    """Drop every recorded added loss in ``model`` (and the graphs they hold)."""
    for store in _stores(model):
        store.clear()
