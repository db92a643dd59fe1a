"""The model scale: images enter and leave the network in [-1, 1]; everything else is [0, 1].

Conditions are handed to the engine in [0, 1] (the working grid's normalised scale) and
converted once, here; samplers return x0 in [-1, 1] and callers convert back with
:func:`from_model_scale`.
"""

from __future__ import annotations

import torch


def to_model_scale(x):
    """[0, 1] -> [-1, 1]; tensors and arrays give a tensor, a Python number stays a number."""
    if isinstance(x, (int, float)):
        return x * 2.0 - 1.0
    return torch.as_tensor(x) * 2.0 - 1.0


def from_model_scale(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clipped."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)
