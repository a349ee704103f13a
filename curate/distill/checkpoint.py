"""Trainer checkpoints (``output_dir/checkpoint``): ``model.safetensors`` + ``state.pt``.

``state.pt`` holds the optimizer, scheduler and grad-scaler states, the torch (and CUDA) RNG states and
the trainer's own counters (step, data position, on-policy generator, history), and is read back with
``torch.load(weights_only=True)`` (no pickle of arbitrary objects). A checkpoint is written into
``<name>.tmp`` and swapped in by two renames; a crash between them leaves ``<name>.old``, which
:func:`load_checkpoint` falls back to.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch


def save_checkpoint(path: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, scaler: Any, state: dict[str, Any]) -> None:
    """Write ``model`` and the training ``state`` (plus optimizer/scheduler/scaler/RNG states) to ``path``."""
    from safetensors.torch import save_model

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    full: dict[str, Any] = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                            **state, "rng_torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        full["rng_cuda"] = torch.cuda.get_rng_state_all()
    if scaler:
        full["scaler"] = scaler.state_dict()
    torch.save(full, tmp / "state.pt")
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, scaler: Any, device: torch.device) -> dict[str, Any]:
    """Restore ``model``, optimizer, scheduler, scaler and RNG states from ``path``; returns the state dict
    (the trainer reads its own counters from it)."""
    from safetensors.torch import load_model

    path = Path(path)
    old = path.with_name(path.name + ".old")
    if not path.exists() and old.exists():  # a crash between the two renames of save_checkpoint
        path = old
    load_model(model, str(path / "model.safetensors"), device=str(device))
    state = torch.load(path / "state.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng_torch"])
    if "rng_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    if scaler and "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    return state
