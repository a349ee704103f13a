"""Token-level language-model metrics for teacher/student comparison (torch, imported lazily).

All functions take logits ``[..., V]`` and a boolean ``mask`` of the positions that count (or labels
with ``-100`` for ignored positions), compute in float32 and return plain Python floats or
``(sum, count)`` pairs so callers can add batches up exactly:

* :func:`token_nll` / :func:`perplexity`: masked next-token negative log-likelihood, ppl = exp(mean NLL).
* :func:`token_kl`: the *true* KL(p_T || p_S) = sum_v p_T (log p_T - log p_S), teacher entropy included
  (not the soft cross-entropy some trainers report, distillation.md A5).
* :func:`token_js`: Jensen-Shannon divergence with M = (p_T + p_S)/2, in nats (<= ln 2).
* :func:`top1_agreement`: how often argmax teacher == argmax student.
* :func:`calibration_bins`: ECE bins of the model's top-1 confidence vs correctness on the labels.

:class:`LMEvalAccumulator` sums all of these over batches (for held-out evaluation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from curate.models.calibration import ece_bins, ece_from_bins
from curate.models.causal_lm import IGNORE

if TYPE_CHECKING:
    import torch


def _flat(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return logits.reshape(-1, logits.shape[-1])[mask.reshape(-1).bool()].float()


def token_nll(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE) -> tuple[float, int]:
    """Sum of -log p(label) over positions whose label != ignore_index, and their count.

    ``logits[..., t, :]`` must already be aligned with ``labels[..., t]`` (shift before calling).
    """
    import torch.nn.functional as F

    lab = labels.reshape(-1)
    keep = lab != ignore_index
    n = int(keep.sum())
    if n == 0:
        return 0.0, 0
    lp = F.log_softmax(logits.reshape(-1, logits.shape[-1])[keep].float(), dim=-1)
    return float(-lp.gather(1, lab[keep].unsqueeze(1)).sum()), n


def perplexity(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE) -> float:
    """exp(mean masked NLL); nan when no position counts."""
    s, n = token_nll(logits, labels, ignore_index)
    return math.exp(s / n) if n else float("nan")


def token_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    """Sum over masked positions of KL(p_T || p_S) (nats), and the count."""
    import torch.nn.functional as F

    t = F.log_softmax(_flat(teacher_logits, mask), -1)
    s = F.log_softmax(_flat(student_logits, mask), -1)
    return float((t.exp() * (t - s)).sum()), t.shape[0]


def token_js(teacher_logits: torch.Tensor, student_logits: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    """Sum over masked positions of JS(p_T, p_S) = (KL(p_T||M) + KL(p_S||M))/2, M = (p_T+p_S)/2."""
    import torch
    import torch.nn.functional as F

    t = F.log_softmax(_flat(teacher_logits, mask), -1)
    s = F.log_softmax(_flat(student_logits, mask), -1)
    m = torch.logaddexp(t, s) - math.log(2.0)
    js = 0.5 * (t.exp() * (t - m)).sum(-1) + 0.5 * (s.exp() * (s - m)).sum(-1)
    return float(js.sum()), t.shape[0]


def top1_agreement(teacher_logits: torch.Tensor, student_logits: torch.Tensor, mask: torch.Tensor) -> tuple[int, int]:
    """Number of masked positions where argmax teacher == argmax student, and the count."""
    m = mask.reshape(-1).bool()
    a = teacher_logits.reshape(-1, teacher_logits.shape[-1])[m].argmax(-1)
    b = student_logits.reshape(-1, student_logits.shape[-1])[m].argmax(-1)
    return int((a == b).sum()), int(m.sum())


def calibration_bins(logits: torch.Tensor, labels: torch.Tensor, *, n_bins: int = 15,
                     ignore_index: int = IGNORE) -> np.ndarray:
    """ECE bins (see :func:`curate.models.calibration.ece_bins`) of top-1 confidence vs label hit."""
    lab = labels.reshape(-1)
    keep = lab != ignore_index
    p = logits.reshape(-1, logits.shape[-1])[keep].float().softmax(-1)
    conf, pred = p.max(-1)
    return ece_bins(conf.cpu().numpy(), (pred == lab[keep]).cpu().numpy(), n_bins)


@dataclass
class _ModelSums:
    nll: float = 0.0
    n: int = 0
    bins: np.ndarray | None = None

    def add(self, logits: torch.Tensor, labels: torch.Tensor, n_bins: int) -> None:
        s, n = token_nll(logits, labels)
        self.nll += s
        self.n += n
        b = calibration_bins(logits, labels, n_bins=n_bins)
        self.bins = b if self.bins is None else self.bins + b

    def result(self) -> dict[str, float]:
        mean = self.nll / self.n if self.n else float("nan")
        return {"nll": mean, "ppl": math.exp(mean) if self.n else float("nan"),
                "ece": ece_from_bins(self.bins) if self.bins is not None else float("nan")}


@dataclass
class LMEvalAccumulator:
    """Adds up teacher and student metrics over held-out batches; :meth:`result` gives the means.

    ``add(student_logits, labels, teacher_logits=None)``: logits aligned with labels (shifted),
    positions with label -100 ignored everywhere.
    """

    n_bins: int = 15
    student: _ModelSums = field(default_factory=_ModelSums)
    teacher: _ModelSums = field(default_factory=_ModelSums)
    kl: float = 0.0
    js: float = 0.0
    agree: int = 0
    n_pair: int = 0

    def add(self, student_logits: torch.Tensor, labels: torch.Tensor,
            teacher_logits: torch.Tensor | None = None) -> None:
        self.student.add(student_logits, labels, self.n_bins)
        if teacher_logits is None:
            return
        v = min(student_logits.shape[-1], teacher_logits.shape[-1])
        s, t = student_logits[..., :v], teacher_logits[..., :v]
        self.teacher.add(t, labels, self.n_bins)
        mask = labels != IGNORE
        kl, n = token_kl(t, s, mask)
        js, _ = token_js(t, s, mask)
        ag, _ = top1_agreement(t, s, mask)
        self.kl += kl
        self.js += js
        self.agree += ag
        self.n_pair += n

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {"student": self.student.result(), "tokens": self.student.n}
        if self.n_pair:
            out["teacher"] = self.teacher.result()
            out["kl_teacher_student"] = self.kl / self.n_pair
            out["js_teacher_student"] = self.js / self.n_pair
            out["top1_agreement"] = self.agree / self.n_pair
        return out
