"""What a teacher's top-k distribution says about a token, a step and an example, with or without a student:
the shared computations of uncertainty-aware distillation (:mod:`curate.distill.modes_uncert`) and the
``teacher_student`` selector (:mod:`curate.selectors.teacher_student`).

Everything reads the teacher as the cache and the trainer see it: per position the top-k log-probs at T=1,
their ids and the log of the tail mass (:class:`curate.models.topk.TopK`; row t = the distribution of
token t+1). Definitions (``p`` teacher, ``q`` student, ``V`` vocabulary size):

* :func:`topk_entropy` -- the teacher's entropy with the tail mass spread uniformly over the ``V - k``
  ids outside the top-k (the assumption :mod:`curate.distill.losses` makes for tempered tails):
  ``H = -sum_i p_i log p_i - P_tail log(P_tail / (V - k))``. It is the largest entropy any distribution
  with that top-k can have (an upper bound; the top-k + tail-bucket entropy of
  :mod:`curate.models.topk_cache` is the lower bound); both are exact when k = V.
* :func:`bucket_kl` -- KL(p || q) between teacher and student coarsened to the k teacher ids plus one
  "rest" bucket (student rest mass = its probability outside the k ids, exact by logsumexp). Exact when
  k = V; otherwise a lower bound of the full-vocabulary KL (data-processing inequality) -- the same
  quantity the distillation trainer minimises on a cached teacher.
* :func:`topk_token_nll` -- ``-log p(actual next token)``; outside the top-k the tail bucket's log-mass
  stands in (a lower bound; exact when k = V), as ``teacher_nll`` of :mod:`curate.models.topk_cache`.
* KPOD step difficulty (Feng et al. 2024, "Keypoint-based Progressive Chain-of-Thought Distillation for
  LLMs", ICML 2024, arXiv 2405.16064; issue 13 cites it as Eq. 5 of the survey of Fang et al. 2025, whose
  text was not retrievable here, so the definition follows the paper's own statement that "a weighted token
  generation loss is proposed to assess step reasoning difficulty"): a rationale is cut into reasoning
  steps and the difficulty of step k is its weighted token generation loss,
  ``d_k = sum_{j in step k} w_j * l_j`` with ``l_j = -log P(r_j | r_<j, x)`` and ``w_j`` the token's
  significance. KPOD learns ``w_j`` with a mask-learning module (a weight generator trained so that an
  answer predictor still answers from the rationale with the low-weight tokens masked); that module is
  not implemented here: ``w_j`` is uniform (1) or the teacher's confidence ``1 - H_j / log V``, each
  normalised to mean 1 over the example's scored tokens, and ``l_j`` is the *teacher's* NLL from its
  top-k (the paper scores with the model being trained; the teacher's view is what the cache holds).
  Steps end at tokens whose decoded text matches a pattern (:func:`step_end_table`; default a newline or
  sentence-final punctuation). The per-example score :func:`kpod_difficulty` is the mean step difficulty
  ``(1/K) sum_k d_k`` (long rationales of easy steps are not "hard").
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, Literal

import torch

from curate.models.topk import TopK

Significance = Literal["uniform", "teacher_confidence"]
#: a step ends after a newline or a sentence-final ., ! or ? (a decimal point "3.5" splits too: a
#: token-level rule cannot see the next token; set another pattern for such data)
DEFAULT_STEP_PATTERN = r"\n|[.!?]\s*$"


def topk_entropy(logprobs: torch.Tensor, tail_logmass: torch.Tensor, vocab: int) -> torch.Tensor:
    """Teacher entropy per row ``[...]`` from top-k log-probs ``[..., k]`` and the tail log-mass, the tail
    spread uniformly over the ``vocab - k`` other ids (see the module docstring)."""
    lp = logprobs.double() if logprobs.dtype == torch.float64 else logprobs.float()
    tail = tail_logmass.to(lp.dtype)
    p = lp.exp()
    h = -(torch.where(p > 0, p * lp, torch.zeros_like(p))).sum(-1)
    k = logprobs.shape[-1]
    if vocab > k:
        pt = tail.exp()
        h = h - torch.where(pt > 0, pt * (tail - math.log(vocab - k)), torch.zeros_like(pt))
    return h


def dense_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy per row of ``softmax(logits)`` (rows ``[..., V]``; -inf logits allowed)."""
    lp = torch.log_softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, -1)
    p = lp.exp()
    return -(torch.where(p > 0, p * lp, torch.zeros_like(p))).sum(-1)


def target_entropy(target: Any, vocab: int) -> torch.Tensor:
    """Teacher entropy per row of a loss target: full logits ``[n, V]`` or a :class:`TopK`."""
    if isinstance(target, TopK):
        return topk_entropy(target.logprobs, target.tail_logmass, vocab)
    return dense_entropy(target)


def bucket_kl(student_logprobs: torch.Tensor, teacher: TopK) -> torch.Tensor:
    """KL(p || q) per row over the k teacher ids + one rest bucket (see the module docstring).

    ``student_logprobs``: ``[n, V]`` log-softmax of the student at T=1; ``teacher``: ``TopK [n, k]``."""
    ls = student_logprobs
    ids = teacher.ids.to(ls.device).long()
    lq_k = ls.gather(-1, ids)
    lq_rest = torch.logsumexp(ls.scatter(-1, ids, float("-inf")), dim=-1, keepdim=True)
    lp = torch.cat([teacher.logprobs.to(ls), teacher.tail_logmass.to(ls).unsqueeze(-1)], -1)
    lq = torch.cat([lq_k, lq_rest], -1)
    p = lp.exp()
    # 0 * log 0 = 0 (an empty rest bucket when k = V, or an underflowed top-k entry)
    return torch.where(p > 0, p * (lp - lq), torch.zeros_like(p)).sum(-1)


def topk_token_nll(teacher: TopK, next_ids: torch.Tensor) -> torch.Tensor:
    """``-log p(next token)`` per row; the tail log-mass when the token is outside the top-k."""
    hit = teacher.ids == next_ids.long().unsqueeze(-1)
    lp = torch.where(hit.any(-1), (teacher.logprobs * hit).sum(-1), teacher.tail_logmass)
    return -lp


# ---------------------------------------------------------------------------------------------- KPOD steps
def step_end_table(tokenizer: Any, vocab: int, pattern: str = DEFAULT_STEP_PATTERN) -> torch.Tensor:
    """Bool ``[vocab]``: whether token id v ends a reasoning step (its decoded text matches ``pattern``).

    One decode per id, once per run."""
    rx = re.compile(pattern)
    size = min(vocab, len(tokenizer)) if hasattr(tokenizer, "__len__") else vocab
    texts = tokenizer.batch_decode([[i] for i in range(size)], skip_special_tokens=False,
                                   clean_up_tokenization_spaces=False)
    out = torch.zeros(vocab, dtype=torch.bool)
    out[:size] = torch.tensor([bool(rx.search(t)) for t in texts], dtype=torch.bool)
    return out


def step_index(tokens: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """Step number of each token of a response ``[n]`` (0-based): a token that ends a step is the last
    token of its step; the next token starts the next one."""
    e = ends[tokens.long()].long()
    return torch.cumsum(e, 0) - e


def token_significance(teacher: TopK, vocab: int, significance: Significance) -> torch.Tensor:
    """KPOD token weights ``w_j`` ``[n]`` (see the module docstring), normalised to mean 1."""
    n = teacher.ids.shape[0]
    if significance == "uniform" or n == 0:
        return torch.ones(n, dtype=torch.float64)
    if significance != "teacher_confidence":
        raise ValueError(f"unknown significance {significance!r}")
    h = topk_entropy(teacher.logprobs.double(), teacher.tail_logmass.double(), vocab)
    w = (1.0 - h / math.log(vocab)).clamp(min=0.0)
    s = float(w.sum())
    return w * (n / s) if s > 0 else torch.ones(n, dtype=torch.float64)


def step_difficulties(teacher: TopK, tokens: torch.Tensor, ends: torch.Tensor, *, vocab: int,
                      significance: Significance = "uniform") -> torch.Tensor:
    """KPOD ``d_k`` ``[K]`` of one response: rows ``teacher [n, k]`` predict ``tokens [n]``."""
    nll = topk_token_nll(teacher, tokens).double()
    w = token_significance(teacher, vocab, significance)
    idx = step_index(tokens, ends)
    k = int(idx.max()) + 1 if idx.numel() else 0
    return torch.zeros(k, dtype=torch.float64).index_add_(0, idx, w * nll)


def response_rows(row: dict[str, Any], start: int) -> tuple[TopK, torch.Tensor]:
    """The teacher rows predicting tokens ``start .. L-1`` of a cached sequence and those tokens."""
    ids = row["input_ids"]
    n = int(ids.shape[0])
    s = max(1, int(start))
    sl = slice(s - 1, n - 1)
    return TopK(row["ids"][sl], row["logprobs"][sl], row["tail_logmass"][sl]), ids[s:n]


def kpod_difficulty(row: dict[str, Any], start: int, ends: torch.Tensor, *, vocab: int,
                    significance: Significance = "uniform") -> float:
    """Mean KPOD step difficulty of one sequence (see the module docstring); NaN with no scored token."""
    t, toks = response_rows(row, start)
    if toks.numel() == 0:
        return math.nan
    return float(step_difficulties(t, toks, ends, vocab=vocab, significance=significance).mean())


# ---------------------------------------------------------------------------------------------- student side
@torch.no_grad()
def teacher_rows(model: Any, seqs: Sequence[Sequence[int]], *, k: int, pad_id: int, device: Any = "cpu",
                 batch_size: int = 8) -> list[dict[str, Any]]:
    """Per sequence the cache's row format ``{input_ids [L], ids [L,k], logprobs [L,k], tail_logmass [L]}``
    from a forward of ``model`` (log-softmax in float32, exact tail), for data no cache holds."""
    out: list[dict[str, Any]] = []
    for a in range(0, len(seqs), batch_size):
        ids, att = _pad(seqs[a:a + batch_size], pad_id)
        logits = model(input_ids=ids.to(device), attention_mask=att.to(device)).logits
        top = TopK.from_logits(logits.float(), k)
        for r, s in enumerate(seqs[a:a + batch_size]):
            n = len(s)
            out.append({"input_ids": torch.as_tensor(list(s)), "ids": top.ids[r, :n].cpu(),
                        "logprobs": top.logprobs[r, :n].cpu(), "tail_logmass": top.tail_logmass[r, :n].cpu()})
    return out


def _pad(group: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    w = max(len(s) for s in group)
    ids = torch.full((len(group), w), pad_id, dtype=torch.long)
    att = torch.zeros_like(ids)
    for r, s in enumerate(group):
        ids[r, :len(s)] = torch.as_tensor(list(s))
        att[r, :len(s)] = 1
    return ids, att


@torch.no_grad()
def student_signals(student: Any, rows: Sequence[dict[str, Any]], starts: Sequence[int], *, pad_id: int,
                    device: Any = "cpu", batch_size: int = 8, vocab: int | None = None) -> dict[str, list[float]]:
    """Per sequence the mean over its scored tokens (``starts[i]`` .. end) of the teacher-student bucket
    KL (:func:`bucket_kl`) and of the student's NLL of the reference token: ``{"teacher_student_kl": [...],
    "student_nll": [...]}`` (NaN for a sequence with no scored token). ``rows`` are cache rows (or
    :func:`teacher_rows`); the student's logits are sliced to ``vocab`` ids (the shared vocabulary)."""
    kl: list[float] = []
    nll: list[float] = []
    was = getattr(student, "training", False)
    student.eval()
    for a in range(0, len(rows), batch_size):
        group = rows[a:a + batch_size]
        ids, att = _pad([r["input_ids"].tolist() for r in group], pad_id)
        logits = student(input_ids=ids.to(device), attention_mask=att.to(device)).logits.float()
        if vocab is not None:
            logits = logits[..., :vocab]
        for r, row in enumerate(group):
            n = int(row["input_ids"].shape[0])
            s = max(1, int(starts[a + r]))
            if s >= n:
                kl.append(math.nan)
                nll.append(math.nan)
                continue
            ls = torch.log_softmax(logits[r, s - 1:n - 1].double(), -1)
            t, toks = response_rows(row, s)
            kl.append(float(bucket_kl(ls, t.to(ls.device, torch.float64)).mean()))
            nll.append(float(-ls.gather(-1, toks.to(ls.device).long().unsqueeze(-1)).mean()))
    student.train(was)
    return {"teacher_student_kl": kl, "student_nll": nll}
