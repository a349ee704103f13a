"""Device and dtype resolution shared by every model loader, the executors and the trainer.

``resolve_device("auto")`` is CUDA when torch sees a GPU, else CPU (the rule TRL's
``create_model_from_path`` applies before loading). ``resolve_dtype("auto", device)`` is bfloat16 on a GPU
that supports it (float16 on older ones), float32 on CPU, where half precision is slower and loses accuracy.
torch is imported inside the functions, so importing this module is free.
"""

from __future__ import annotations

from typing import Any

#: dtype names accepted in configs (``ModelSpec.dtype``, ``logprob_dtype``, operator ``dtype`` fields).
DTYPE_NAMES = ("float32", "float16", "bfloat16")


def cuda_available() -> bool:
    """Whether torch is installed and sees a CUDA device (False without torch, which is not imported otherwise)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def resolve_device(device: str | None = "auto") -> str:
    """``'cuda'`` or ``'cpu'`` for ``'auto'`` (or None); other names are returned after a CUDA check.

    Asking for ``cuda`` on a machine without one is a RuntimeError rather than a silent CPU run.
    """
    if device in (None, "auto"):
        return "cuda" if cuda_available() else "cpu"
    if str(device).startswith("cuda") and not cuda_available():
        raise RuntimeError(f"device '{device}' asked for but torch sees no CUDA device")
    return str(device)


def torch_device(device: str | None = "auto") -> Any:
    """:func:`resolve_device` as a ``torch.device`` (for code that compares ``.type``).

    Unlike :func:`resolve_device`, an explicit ``cuda`` name is passed to torch unchecked (torch raises
    on first use), as the distillation trainer always did.
    """
    import torch

    if device in (None, "auto"):
        return torch.device(resolve_device("auto"))
    return torch.device(device)


def torch_dtype(name: str) -> Any:
    """The torch dtype named ``float32`` / ``float16`` / ``bfloat16`` (a ValueError names the choices)."""
    import torch

    if name not in DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_NAMES)} (or 'auto'), got {name!r}")
    return getattr(torch, name)


def resolve_dtype(name: Any, device: str = "cpu") -> Any:
    """A torch dtype for ``name`` on ``device``: 'auto' -> bfloat16/float16 on CUDA, float32 on CPU.

    A torch dtype passes through; None stays None (the checkpoint's own dtype).
    """
    import torch

    if name is None or isinstance(name, torch.dtype):
        return name
    if name == "auto":
        if str(device).startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return torch_dtype(name)
