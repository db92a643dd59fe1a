"""Where networks run: ``auto`` picks CUDA when it is there, else the CPU."""

from __future__ import annotations

import torch

from localdiffusion.errors import InputError


def select_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda requested but CUDA is not available")
    return torch.device(device)
