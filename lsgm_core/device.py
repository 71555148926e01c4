"""Which torch device a job runs on."""
from __future__ import annotations

import torch


def pick_device(name: str | None = None) -> torch.device:
    """`name` if given, else cuda, mps or cpu, whichever is available first."""
    if name:
        dev = torch.device(name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for, but PyTorch sees no CUDA GPU here")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError("--device mps was asked for, but MPS is not available here")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
