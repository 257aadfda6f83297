"""Where the model runs and in which precision: configuration, never a fork in the code path."""

from __future__ import annotations

import torch

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(requested: str) -> torch.device:
    """ "auto" is the first GPU when torch sees one, else the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)  # RuntimeError for "cuda:abc"
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA GPU; use DEVICE=auto or cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise RuntimeError(f"torch sees {torch.cuda.device_count()} GPU(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("MPS (Apple GPU) is not available on this machine")
    return device


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    """ "auto" is float16 on CUDA and float32 elsewhere."""
    if requested == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return _DTYPES[requested]


def is_out_of_memory(error: BaseException) -> bool:
    """True for an accelerator running out of memory (the batch was too big, not the input bad)."""
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def release_cached_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


# CUDA errors after which the context is unusable: every later kernel fails the same way, so the
# worker must be replaced, not retried (an out-of-memory error is not one of them).
_DEVICE_FAULTS = (
    "illegal memory access",
    "device-side assert",
    "uncorrectable ecc",
    "unspecified launch failure",
    "misaligned address",
    "illegal instruction",
    "cudaerrorlaunchfailure",
    "cublas_status_execution_failed",
    "gpu is lost",
    "fell off the bus",
)


def is_device_fault(error: BaseException) -> bool:
    """True for an accelerator fault that leaves the process unable to compute (not OOM)."""
    message = str(error).lower()
    return not is_out_of_memory(error) and any(fault in message for fault in _DEVICE_FAULTS)
