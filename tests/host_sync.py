"""Which aten ops of a piece of code would make the host wait for a CUDA device.

A CUDA graph cannot capture such an op (the capture fails with "operation not permitted when
stream is capturing"), and in an eager GPU step each one stalls the launch queue once per
step. The ops are the same on every device, so a CPU test can find them: ``.item()``,
``bool(t)`` or ``if t:`` (``_local_scalar_dense``), ``torch.distributions``' argument checks
(``_is_all_true`` read back on the host), boolean-mask indexing and ``nonzero`` (an output size
known only after the device has run). Not caught here: host-to-device copies of CPU tensors,
which only differ from ordinary copies on a GPU. Not counted: ``F.one_hot``'s check of its
class indices, which torch makes on the host for CPU tensors only (on CUDA a device assert).
"""

from __future__ import annotations

import traceback

from torch.utils._python_dispatch import TorchDispatchMode

SYNCING_OPS = frozenset(
    [
        "_local_scalar_dense",
        "is_nonzero",
        "nonzero",
        "masked_select",
        "_unique2",
        "unique_dim",
        "unique_consecutive",
        "bincount",
        "equal",
        "allclose",
    ]
)


class HostSyncs(TorchDispatchMode):
    """``with HostSyncs() as syncs: ...``; ``syncs.found`` lists ``"op at file:line"`` of each
    syncing op run inside (the innermost frame of this project's code, else torch's)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if name in SYNCING_OPS:
            skip = ("_python_dispatch.py", "eval_frame.py", "_compile.py")
            frames = [f for f in traceback.extract_stack()[:-1] if not f.filename.endswith(skip)]
            if "one_hot(" in (frames[-1].line or ""):  # a CPU-only check (module docstring)
                return func(*args, **(kwargs or {}))
            ours = [f for f in frames if "problayers" in f.filename or "/tests/" in f.filename]
            where = (ours or frames)[-1]
            self.found.append(f"{name} at {'/'.join(where.filename.rsplit('/', 2)[-2:])}:{where.lineno}")
        return func(*args, **(kwargs or {}))
