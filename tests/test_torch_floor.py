"""The declared floor, ``torch>=2.4``: what torch 2.4 lacks, simulated on today's torch.

Torch 2.4 has no autocast for mps (``torch.is_autocast_enabled("mps")`` raises) and no
``torch.compiler.is_exporting`` (torch 2.7): every distribution layer and ``WeightNorm`` failed
on their first call there. Checked for real on torch 2.4.1 (2026-12-07, an audit): the catalog,
the KL regularizer, the README example and ``problayers train`` run; ``fullgraph=True``
compiles need torch >= 2.12 (docs/design.md)."""

from __future__ import annotations

import subprocess
import sys

AS_ON_TORCH_2_4 = """
import torch
from torch import nn

available, enabled = torch.amp.is_autocast_available, torch.is_autocast_enabled


def is_autocast_enabled(*args):
    if args and args[0] == "mps":
        raise RuntimeError("unknown device type for autocast in get_autocast_dispatch_key_from_device_type")
    return enabled(*args)


torch.amp.is_autocast_available = lambda device_type: device_type != "mps" and available(device_type)
torch.is_autocast_enabled = is_autocast_enabled
del torch.compiler.is_exporting

import problayers as pl

out = pl.IndependentNormal(2)(torch.randn(4, 4))
out.log_prob(out.sample())
with torch.autocast("cpu", dtype=torch.bfloat16):
    pl.IndependentNormal(2)(torch.randn(4, 4)).log_prob(torch.zeros(4, 2))
pl.WeightNorm(nn.Linear(3, 4))(torch.randn(5, 3))
print("ok")
"""


def test_the_layers_run_without_what_torch_2_4_lacks():
    out = subprocess.run([sys.executable, "-c", AS_ON_TORCH_2_4], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
