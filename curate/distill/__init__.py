"""curate.distill: knowledge distillation of a student causal LM from a teacher.

``from curate.distill import distill, DistillConfig``; ``distill("distill.yaml")`` or
``distill(DistillConfig(...))``. torch/transformers are imported only when a run starts.
"""

from __future__ import annotations

from typing import Any

from curate.distill.config import DistillConfig

__all__ = ["DistillConfig", "DistillTrainer", "build_cache", "distill"]


def __getattr__(name: str) -> Any:
    if name in ("distill", "build_cache"):
        from curate.distill import run

        return getattr(run, name)
    if name == "DistillTrainer":
        from curate.distill.trainer import DistillTrainer

        return DistillTrainer
    raise AttributeError(name)
