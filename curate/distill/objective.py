"""The per-token objective of a distillation step: the loss half of a KD mode (see :mod:`curate.distill.trainer`).

A loss is any object with ``needs_teacher`` and ``__call__(student_logits [n, V], target, labels [n]) ->
(per-token loss [n], {component: detached sum})``; ``target`` is what the mode's teacher signal gives for
those rows (:meth:`curate.distill.signals.Targets.chunk`: teacher logits, a :class:`TopK`, or whatever a new
signal produces), None when ``needs_teacher`` is False. The trainer sums the per-token loss over the
accumulated batch and divides by its number of valid tokens; components (``ce``, ``kd``) are logged the
same way.

:class:`SpecLoss` is the ``loss:`` section of ``distill.yaml``: ``ce``, ``hinton``, or
``(1 - alpha) * T^2 * KD + alpha * CE`` for the divergences of :mod:`curate.distill.losses`, through the
fused paths of :mod:`curate.distill.fused` while gradients are taken.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

from curate.distill import losses as L
from curate.distill.config import LossSpec
from curate.distill.fused import fused_kd


class TokenLoss(Protocol):
    """The loss half of a KD mode."""

    #: False for losses on hard labels only (then no teacher signal is built or asked for)
    needs_teacher: bool

    def __call__(self, student_logits: torch.Tensor, target: Any,
                 labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


class SpecLoss:
    """The configured loss (``distill.yaml`` ``loss:``); ``scratch(t)`` gives reusable buffers shaped like ``t``
    for the fused paths (None: fresh tensors)."""

    def __init__(self, spec: LossSpec,
                 scratch: Callable[[torch.Tensor], Callable[[str], torch.Tensor] | None] | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        self.needs_teacher = spec.name != "ce"
        self.scratch = scratch
        kw: dict[str, Any] = {"temperature": spec.temperature}
        if spec.name == "generalized_jsd":
            kw["beta"] = spec.beta
        elif spec.name in ("skew_kl", "skew_reverse_kl"):
            kw["alpha"] = spec.skew_alpha
        elif spec.name == "bild":
            kw["top_k"] = spec.top_k
        self.kw = kw

    def __call__(self, student_logits: torch.Tensor, target: Any,
                 labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ls = self.spec
        if ls.name == "ce":
            ce = L.token_ce(student_logits, labels)
            return ce, {"ce": ce.detach().sum()}
        if ls.name == "hinton":
            return L.hinton_kd(student_logits, target, labels, alpha=ls.alpha, temperature=ls.temperature), {}
        kd = None
        if torch.is_grad_enabled() and student_logits.requires_grad:
            ws = self.scratch(student_logits) if self.scratch else None
            kd = fused_kd(L.loss_name(ls.name), student_logits, target, self.kw, ws)
        if kd is None:
            kd = L.compute_kd_loss(ls.name, student_logits, target, **self.kw)
        total = (1.0 - ls.alpha) * ls.temperature ** 2 * kd
        comp = {"kd": kd.detach().sum()}
        if ls.alpha > 0:  # no CE pass at all for pure KD (alpha = 0)
            ce = L.token_ce(student_logits, labels)
            total = total + ls.alpha * ce
            comp["ce"] = ce.detach().sum()
        return total, comp
