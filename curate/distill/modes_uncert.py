"""Uncertainty-aware distillation (survey of Fang et al. 2025, §3.2; issue 13 item 3): the KD term of each
token weighted by the teacher's confidence, a teacher target leaning on a label prior where the teacher is
unsure, and KPOD's progressive rationale distillation (easy steps first).

A KD mode here is a signal and a loss (:mod:`curate.distill.trainer`): :class:`UncertaintySignal` wraps the
run's teacher signal (online teacher or cached top-k) and hands the loss, per chunk, the teacher target
(with the prior applied) and the tokens' weights; :class:`UncertaintyLoss` is the ``loss:`` section with
the KD term weighted. Configured in ``distill.yaml``::

    loss: {name: forward_kl, alpha: 0.5, token_weighting: teacher_entropy, teacher_prior: label_smoothing}
    data: {kpod: {stages: 4, significance: teacher_confidence}, order: kpod_difficulty_asc}

**Token weighting** (``loss.token_weighting``). With ``H_t`` the teacher's entropy at token t (full
vocabulary for an online teacher; from a top-k cache with the tail spread uniformly,
:func:`curate.models.teacher_student.topk_entropy`) and ``V`` the vocabulary size:

* ``teacher_entropy``: ``c_t = 1 - H_t / log V`` -- the normalised-entropy confidence, 1 for a one-hot
  teacher, 0 for a uniform one;
* ``teacher_exp_entropy``: ``c_t = exp(-H_t)`` -- the inverse of the teacher's perplexity at t (1 over its
  effective number of choices); it falls off faster than the linear form.

The weights are ``w_t = c_t * n / sum_s c_s`` over the ``n`` valid tokens of each micro-batch, so they
average exactly 1 over the accumulated batch and the loss keeps its scale (the tokens the teacher is
unsure of give up weight to those it is sure of; with every ``c`` equal it is plain KD). The total per
token is ``alpha * CE + (1 - alpha) * w_t * T^2 * KD_t``: only the KD term is weighted, the hard-label CE
is not (the label is as reliable where the teacher hesitates). Down-weighting the teacher where its
distribution is flat follows the uncertainty-aware KD line of the survey (§3.2) and ATKD (Zhong et al.
2024, "Revisiting Knowledge Distillation for Autoregressive Language Models", which splits tokens by the
teacher's uncertainty); the exact forms and the per-micro-batch normalisation are this toolkit's choice.
Cost: the weights need the teacher's entropy of every row before the first chunk's loss, so an online
teacher whose head the trainer applies per chunk (hidden-state targets) has its head applied twice per
micro-batch (its body once); full-logit and cached teachers cost one entropy pass over what is there.

**Teacher-informed prior** (``loss.teacher_prior: label_smoothing``). The teacher's target becomes
``p~_t = (1 - lambda_t) p_t + lambda_t * s_t`` with ``s_t = (1 - eps) onehot(y_t) + eps / V`` the
label-smoothed reference token (Szegedy et al. 2016, eps = ``prior_smoothing``, 0.1 as there) and
``lambda_t = prior_weight * H_t / log V``: the flatter the teacher, the more the target leans on the label.
KD as learned label smoothing and the label-smoothed "virtual teacher" are from Yuan et al. 2020
("Revisiting Knowledge Distillation via Label Smoothing Regularization", CVPR); scaling the mix by the
teacher's uncertainty is this toolkit's choice. On a top-k teacher the mix is done on its k+1 buckets (the
label's prior mass goes to its bucket, the rest bucket when it is outside the top-k), which is exactly the
coarsening of the dense mix.

**KPOD** (Feng et al. 2024, ICML, "Keypoint-based Progressive Chain-of-Thought Distillation for LLMs"):
token significance weighting, step difficulty (:mod:`curate.models.teacher_student`: ``d_k`` = the
weighted token generation loss of step k) and the in-rationale progressive schedule -- "starting with
training the student to generate the final reasoning steps and gradually extending to cover the entire
rationale" (the paper's abstract). Here training is cut into ``data.kpod.stages`` equal stages; in stage s
(of S) an example's loss covers its last n steps, n the largest with ``sum of their d_k <= (s+1)/S * D``
(``D`` = the example's total difficulty; at least the final step, all of them in the last stage); the
earlier steps are context (no loss), as KPOD feeds them to the student as input. KPOD chooses which
questions advance at each stage with a value function over step difficulty and question diversity,
solved as a submodular maximisation; that scheduler is replaced by this per-example difficulty budget
(examples whose final steps are cheap advance faster). Only rationale rows are scheduled in
``data.mode: rationale``. ``data.order: kpod_difficulty_asc`` orders examples by mean step difficulty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from curate.distill import losses as L
from curate.distill.config import LossSpec
from curate.distill.objective import SpecLoss
from curate.distill.signals import MicroBatch, Targets, TeacherSignal
from curate.models.teacher_student import target_entropy
from curate.models.topk import TopK

if TYPE_CHECKING:
    from curate.distill.data import TokenData

__all__ = ["PromptSchedule", "UncertaintyLoss", "UncertaintySignal", "Weighted", "confidence", "kpod_prompts",
           "label_prior", "normalised", "order_values", "uncertainty_mode"]


# ---------------------------------------------------------------------------------------------- weights
def confidence(entropy: torch.Tensor, vocab: int, kind: str) -> torch.Tensor:
    """The teacher's confidence ``c_t`` per token from its entropy (see the module docstring)."""
    if kind == "teacher_entropy":
        return (1.0 - entropy / math.log(vocab)).clamp(0.0, 1.0)
    if kind == "teacher_exp_entropy":
        return torch.exp(-entropy)
    raise ValueError(f"unknown token_weighting {kind!r}")


def normalised(c: torch.Tensor) -> torch.Tensor:
    """``c * n / sum(c)``: mean 1 over the rows (all ones when every ``c`` is 0)."""
    s = c.sum()
    return c * (c.shape[0] / s) if float(s) > 0 else torch.ones_like(c)


def label_prior(target: Any, labels: torch.Tensor, *, vocab: int, weight: float, smoothing: float) -> Any:
    """The teacher target mixed with the label-smoothed reference token, ``lambda_t = weight * H_t / log V``
    (module docstring): full logits ``[n, V]`` -> log-probs ``[n, V]``; a :class:`TopK` -> a TopK over the
    same ids (re-sorted) and the rest bucket."""
    lam = (weight * target_entropy(target, vocab) / math.log(vocab)).clamp(0.0, 1.0).unsqueeze(-1)
    y = labels.long().unsqueeze(-1)
    if not isinstance(target, TopK):
        lp = torch.log_softmax(target.float() if target.dtype in (torch.float16, torch.bfloat16) else target, -1)
        prior = torch.full_like(lp, smoothing / vocab).scatter_add_(
            -1, y, torch.full_like(lp[:, :1], 1.0 - smoothing))
        return torch.log((1.0 - lam) * lp.exp() + lam * prior)
    lp = target.logprobs.float()
    hit = target.ids == y
    k = target.k
    prior_k = smoothing / vocab + (1.0 - smoothing) * hit.to(lp.dtype)
    prior_rest = smoothing * (vocab - k) / vocab + (1.0 - smoothing) * (~hit.any(-1)).to(lp.dtype)
    new_k = torch.log((1.0 - lam) * lp.exp() + lam * prior_k)
    new_tail = torch.log((1.0 - lam[:, 0]) * target.tail_logmass.float().exp() + lam[:, 0] * prior_rest)
    vals, order = new_k.sort(-1, descending=True)  # TopK keeps its log-probs sorted
    return TopK(target.ids.gather(-1, order), vals, new_tail)


@dataclass(frozen=True)
class Weighted:
    """What :class:`UncertaintyLoss` gets per chunk: the teacher target and the tokens' KD weights."""

    target: Any
    weight: torch.Tensor


@dataclass(frozen=True)
class UncertainTargets:
    """The wrapped signal's targets plus per-row weights ``[n]`` and the rows' labels (for the prior)."""

    inner: Targets
    weight: torch.Tensor
    labels: torch.Tensor
    spec: LossSpec
    vocab: int

    def chunk(self, a: int, e: int) -> Weighted:
        t = self.inner.chunk(a, e)
        if self.spec.teacher_prior == "label_smoothing":
            t = label_prior(t, self.labels[a:e], vocab=self.vocab, weight=self.spec.prior_weight,
                            smoothing=self.spec.prior_smoothing)
        return Weighted(t, self.weight[a:e])


class UncertaintySignal:
    """Wraps a teacher signal: the same targets, with each valid row's KD weight (module docstring)."""

    def __init__(self, inner: TeacherSignal, spec: LossSpec, *, vocab: int) -> None:
        self.inner, self.spec, self.vocab = inner, spec, vocab

    def weights(self, targets: Targets, n: int) -> torch.Tensor:
        """Normalised KD weights of rows ``0..n`` (from the teacher's entropy, chunk by chunk)."""
        if self.spec.token_weighting == "none":
            return torch.ones(n)
        step = self.spec.chunk_tokens
        with torch.no_grad():
            h = torch.cat([target_entropy(targets.chunk(a, min(n, a + step)), self.vocab)
                           for a in range(0, n, step)])
        return normalised(confidence(h, self.vocab, self.spec.token_weighting))

    def targets(self, mb: MicroBatch) -> UncertainTargets | None:
        t = self.inner.targets(mb)
        if t is None:
            return None
        w = self.weights(t, mb.n).to(mb.labels.device)
        return UncertainTargets(t, w, mb.labels, self.spec, self.vocab)


class UncertaintyLoss:
    """``alpha * CE + (1 - alpha) * w_t * T^2 * KD`` per token (the configured divergence through
    :class:`SpecLoss`, so the fused paths apply); components: ``kd`` (unweighted, the true divergence) and
    ``ce``."""

    needs_teacher = True

    def __init__(self, spec: LossSpec, scratch: Any = None) -> None:
        if spec.name in ("hinton", "ce"):
            raise ValueError(f"token weighting / teacher prior need a divergence loss, not {spec.name!r}")
        self.spec = spec
        self.name = spec.name
        self.kd = SpecLoss(spec.model_copy(update={"alpha": 0.0}), scratch)  # per token: T^2 * KD

    def __call__(self, student_logits: torch.Tensor, target: Any,
                 labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        w = None
        if isinstance(target, Weighted):
            target, w = target.target, target.weight
        kd, comp = self.kd(student_logits, target, labels)
        a = self.spec.alpha
        total = (1.0 - a) * (kd * w.to(kd) if w is not None else kd)
        if a > 0:
            ce = L.token_ce(student_logits, labels)
            total = total + a * ce
            comp["ce"] = ce.detach().sum()
        return total, comp


def uncertainty_mode(spec: LossSpec, signal: TeacherSignal | None, *, vocab: int,
                     scratch: Any = None) -> tuple[UncertaintyLoss, UncertaintySignal]:
    """The (loss, signal) pair of ``loss.token_weighting`` / ``loss.teacher_prior`` around ``signal``."""
    if signal is None:
        raise ValueError("token weighting / teacher prior need a teacher or a teacher cache")
    return UncertaintyLoss(spec, scratch), UncertaintySignal(signal, spec, vocab=vocab)


# ---------------------------------------------------------------------------------------------- KPOD schedule
def kpod_prompts(data: TokenData, rows: list[dict[str, Any]], ends: torch.Tensor, *, vocab: int, stages: int,
                 significance: str = "uniform") -> list[list[int]]:
    """Per stage, each example's effective prompt length: the loss covers its last steps (module docstring).

    ``rows[i]``: the teacher's cache row of example i; ``ends``: :func:`~curate.models.teacher_student.step_end_table`."""
    from curate.distill.data import TASK_RATIONALE
    from curate.models.teacher_student import response_rows, step_difficulties, step_index

    out = [list(data.n_prompt) for _ in range(stages)]
    for i, row in enumerate(rows):
        if data.task and data.task[i] != TASK_RATIONALE:
            continue
        start = max(1, data.n_prompt[i])
        t, toks = response_rows(row, start)
        if toks.numel() == 0:
            continue
        d = step_difficulties(t, toks, ends, vocab=vocab, significance=significance)  # type: ignore[arg-type]
        idx = step_index(toks, ends)
        k = d.shape[0]
        total = float(d.sum())
        suffix = torch.flip(torch.cumsum(torch.flip(d, [0]), 0), [0])  # suffix[j] = d_j + ... + d_{K-1}
        for s in range(stages):
            if s == stages - 1:
                first = 0
            else:
                budget = (s + 1) / stages * total
                ok = [j for j in range(k) if float(suffix[j]) <= budget + 1e-12]
                first = min(ok) if ok else k - 1
                first = min(first, k - 1)  # at least the final step
            out[s][i] = start + int((idx >= first).nonzero()[0, 0]) if first > 0 else data.n_prompt[i]
    return out


class PromptSchedule:
    """``schedule(step)``: the training examples' prompt lengths at optimizer step ``step`` (stage =
    ``step * S // total_steps``); a pure function of the step, so a resumed run continues the schedule."""

    def __init__(self, prompts: list[list[int]], total_steps: int) -> None:
        self.prompts, self.total = prompts, max(1, total_steps)

    def stage(self, step: int) -> int:
        return min(len(self.prompts) - 1, step * len(self.prompts) // self.total)

    def __call__(self, step: int) -> list[int]:
        return self.prompts[self.stage(step)]


# ---------------------------------------------------------------------------------------------- run.py glue
def train_rows(cfg: Any, p: Any, cache: Any, device: Any) -> list[dict[str, Any]]:
    """The teacher's top-k rows of every training example: the cache's, or one teacher forward."""
    from curate.models.teacher_student import teacher_rows
    from curate.models.topk_cache import iter_sequences

    if cache is not None:
        return list(iter_sequences(cache.dir))
    model = p.teacher.to(device).eval()
    return teacher_rows(model, p.train.seqs, k=cfg.teacher_signal.k, pad_id=p.pad_id, device=device,
                        batch_size=cfg.eval.batch_size)


def step_ends(cfg: Any, p: Any) -> torch.Tensor:
    from curate.models.teacher_student import step_end_table

    return step_end_table(p.tokenizer, p.vocab, cfg.data.kpod.step_pattern)


def kpod_schedule(cfg: Any, p: Any, cache: Any, total_steps: int, device: Any) -> PromptSchedule:
    """The KPOD prompt schedule of ``data.kpod.stages`` for the run's training data."""
    k = cfg.data.kpod
    prompts = kpod_prompts(p.train, train_rows(cfg, p, cache, device), step_ends(cfg, p), vocab=p.vocab,
                           stages=k.stages, significance=k.significance)
    return PromptSchedule(prompts, total_steps)


ORDERS = ("teacher_student_kl", "student_nll", "kpod_difficulty")


def order_values(signal: str, cfg: Any, p: Any, cache: Any, device: Any) -> list[float]:
    """Per training example the curriculum value of ``data.order``'s signal (one of :data:`ORDERS`): the
    student (as initialised) against the cached teacher, or the KPOD mean step difficulty."""
    from curate.models.teacher_student import kpod_difficulty, student_signals

    rows = train_rows(cfg, p, cache, device)
    starts = [max(1, n) for n in p.train.n_prompt]
    if signal == "kpod_difficulty":
        ends = step_ends(cfg, p)
        return [kpod_difficulty(r, s, ends, vocab=p.vocab, significance=cfg.data.kpod.significance)
                for r, s in zip(rows, starts, strict=True)]
    return student_signals(p.student, rows, starts, pad_id=p.pad_id, device=device,
                           batch_size=cfg.eval.batch_size, vocab=p.vocab)[signal]
