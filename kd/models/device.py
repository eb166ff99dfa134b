"""Device and numeric precision choices, resolved once from the user's options: below the models,
so that everything that runs a model (training, teachers, inference) can use them."""
from __future__ import annotations

import contextlib

import torch

from kd.errors import FieldError

PRECISIONS = ("fp32", "bf16")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FieldError("device", name, "CUDA is not available on this machine (use cpu or auto)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise FieldError("device", name, "not a device (use auto, cpu or cuda)") from None


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bfloat16 autocast for the matrix products and LSTMs; the CRF and losses cast back to
    float32 themselves."""
    if precision not in PRECISIONS:
        raise FieldError("precision", precision, f"use one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
