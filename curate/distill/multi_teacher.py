"""Multi-teacher KD (survey "Knowledge Distillation and Dataset Distillation of LLMs" §3.3): several teachers
of one tokenizer mixed per token into one target distribution -- a teacher signal on the one training loop
(:mod:`curate.distill.trainer`); the loss is the configured ``loss:`` unchanged.

**The mixture.** For a valid position t of example e, with teacher distributions ``p_k(.|t)`` (T = 1) and
weights ``w_{e,k}`` (``sum_k w_{e,k} = 1``), the target is the mixture in probability space

    p_mix(v | t) = sum_k w_{e,k} p_k(v | t)

(not an average of logits, which is a normalised geometric mean and sharpens where teachers agree). For
forward KL this is the weighted sum of per-teacher KLs that CA-MKD / EBKD train (``Rorozhl/CA-MKD``
``helper/loops.py``) up to a constant: ``KL(p_mix || q) = sum_k w_k KL(p_k || q) - (sum_k w_k H(p_k) -
H(p_mix))``, the same gradient in q; for reverse KL, JSD, skew KL and BiLD the mixture is simply the
teacher. The loss's temperature is applied to the mixture as to one teacher (``softmax(log p_mix / T)``),
the "ensemble as one teacher" of Hinton et al. 2015; at T = 1 (the default) both readings agree, and the
cached top-k signal only holds T = 1 log-probs anyway.

**The weights** (``multi_teacher.mixing``), per example (one sequence; scores are means over its loss
tokens), with prior weights ``pi_k`` (``teachers[k].weight``, normalised) and ``tau`` (``multi_teacher.tau``):

* ``fixed``: ``w_k = pi_k`` (equal weights: the plain average of soft targets, Hinton et al. 2015; You et al.
  2017).
* ``confidence``: ``w_k = softmax_k(log pi_k - Hbar_k / tau)`` with ``Hbar_k`` the teacher's mean token
  entropy on the example: the more certain teacher leads. ``tau = 0`` gives all the weight to the lowest
  mean-entropy teacher (ties split by the prior). Entropy as teacher confidence is EBKD (Kwon et al.,
  "Adaptive knowledge distillation based on entropy", ICASSP 2020; its weight ``1 - H_k / sum_j H_j`` as in
  ``Rorozhl/CA-MKD``); the softmax form is used here because it is invariant to a shift of all entropies,
  has the hard choice as its tau -> 0 limit, and tau = 1 nat is its natural unit.
* ``agreement``: ``w_k = softmax_k(log pi_k + mean_t log p_k(y_t) / tau)``: each teacher weighted by its
  probability of the gold tokens (tau = 1: by its geometric-mean gold-token probability, i.e. inversely to
  its perplexity on the example), the label-aware weighting of MT-BERT (Wu et al., Findings of ACL 2021) and
  CA-MKD (Zhang, Chen & Wang, ICASSP 2022: ``(1 - softmax_k(CE_k)) / (K - 1)``, which for two teachers
  equals ``softmax_k(-CE_k)``, this rule at tau = 1). ``tau = 0``: the teacher with the highest gold-token
  log-prob.

**Online** (``teacher_signal.mode: online``): every teacher runs on the micro-batch (hidden states kept,
heads applied per chunk, as :class:`~curate.distill.signals.OnlineTeacher`); the weights take one extra
pass of the heads over the chunks (entropies, gold log-probs) before the mixture is built chunk by chunk.

**Cached** (``teacher_signal.mode: cache``): one top-k cache per teacher (``<dir>/<name>``), merged per
token into one :class:`TopK` over the *union* of the teachers' ids. A teacher's probability of a union id
outside its own top-k is unknown (somewhere in its tail); it is read as the tail mass spread uniformly over
the teacher's ``V - k`` non-top-k ids (``u_k = r_k / (V - k)``, DistillKit's ``symmetric_uniform`` reading
of the missing mass and the reading ``curate.distill.losses`` uses at T != 1). So the merged target is the
exact mixture of those completed distributions: ``p(v) = sum_k w_k p_k(v)`` (``u_k`` where v is outside
teacher k's top-k), tail mass ``(V - S) * sum_k w_k u_k``; the merged row holds ``S = sum_k k_k`` distinct
ids (the union, then ids outside it carrying the uniform share, so every row has the same width; all V
ids when 2S > V) and its masses sum to 1. With k = V caches the merge is exact. Entropies and gold-token log-probs for the weights
are read from the same completed distributions (a gold token with no mass counts as log of the smallest
positive float).

**Report**: ``report.json`` ``teachers`` (and a table in ``report.md``): per teacher its prior weight, its mean
mixing weight over the training tokens and over the held-out tokens, its held-out perplexity and the
held-out mean token KL(teacher || student); and KL(mixture || student). The held-out figures use the loaded
teachers (not the ``teacher_signal.dtype`` training copies); after ``--resume`` the training means cover the
steps run since the resume.

Same tokenizer required: a teacher with another token->id map is a ConfigError pointing at cross-tokenizer
KD; logit rows padded differently are sliced to the shared vocabulary.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from curate.core.errors import ConfigError
from curate.distill.config import DistillConfig, MultiTeacherSpec
from curate.distill.data import TokenData, collate
from curate.distill.fused import Scratch
from curate.distill.signals import CachedTopK, MicroBatch, OnlineTeacher, TeacherSignal, TopKTargets
from curate.models.topk import TopK

__all__ = ["MultiCachedTopK", "build_caches", "MultiOnline", "MultiTargets", "MultiTeacher", "dense_scores", "example_means",
           "merge_topk", "mix_logprobs", "mixing_weights", "online_signal", "topk_scores"]

Autocast = Callable[[], contextlib.AbstractContextManager]


# ----------------------------------------------------------------------------------------------- weights
def _floor(lp: torch.Tensor) -> torch.Tensor:
    """log-probs with -inf raised to log(smallest positive float) (a gold token given no mass)."""
    return lp.clamp_min(math.log(torch.finfo(lp.dtype).tiny))


def dense_scores(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row ``(entropy [n], log p(label) [n])`` of ``softmax(logits)`` (T = 1)."""
    lp = torch.log_softmax(logits, dim=-1)
    ent = torch.special.entr(lp.exp()).sum(-1)
    gold = _floor(lp.gather(-1, labels.long().clamp_min(0)[:, None]).squeeze(-1))
    return ent, gold


def _uniform_share(t: TopK, vocab: int) -> torch.Tensor:
    """Per row the tail mass spread over the ``vocab - k`` non-top-k ids, ``r / (V - k)`` (0 when k = V)."""
    r = t.tail_logmass.exp()
    return r / (vocab - t.k) if t.k < vocab else torch.zeros_like(r)


def topk_scores(t: TopK, labels: torch.Tensor, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row ``(entropy, log p(label))`` of a top-k row completed by a uniform tail (module docstring)."""
    lp = t.logprobs
    ent = torch.special.entr(lp.exp()).sum(-1)
    u = _uniform_share(t, vocab)
    if t.k < vocab:  # (V - k) ids of probability u each: -(V - k) u log u = -r log u
        ent = ent + (vocab - t.k) * torch.special.entr(u)
    hit = t.ids == labels.long()[:, None]
    gold = torch.where(hit.any(-1), (lp * hit).sum(-1), u.log())
    return ent, _floor(gold)


def example_means(values: torch.Tensor, example: torch.Tensor, n_examples: int) -> torch.Tensor:
    """Mean of ``values [n, K]`` over the rows of each example (``example [n]`` in ``0..n_examples-1``);
    ``[n_examples, K]``, 0 for an example without rows."""
    s = torch.zeros((n_examples, values.shape[1]), dtype=values.dtype, device=values.device)
    s.index_add_(0, example, values)
    c = torch.bincount(example, minlength=n_examples).to(values.dtype).clamp_min(1)
    return s / c[:, None]


def mixing_weights(scores: torch.Tensor | None, prior: torch.Tensor, tau: float) -> torch.Tensor:
    """``[E, K]`` weights ``softmax_k(log prior_k + scores_k / tau)`` (higher score = more weight);
    ``tau = 0``: all the weight on the best-scoring teacher(s), ties split by the prior; ``scores`` None
    (fixed mixing): the prior itself, ``[1, K]``."""
    pri = prior / prior.sum()
    if scores is None:
        return pri[None, :]
    pri = pri.to(scores.dtype)
    if tau == 0:
        best = (scores == scores.max(dim=-1, keepdim=True).values).to(scores.dtype) * pri
        return best / best.sum(-1, keepdim=True)
    return torch.softmax(pri.log() + scores / tau, dim=-1)


def mix_logprobs(logprobs: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """``log sum_k w_k exp(logprobs_k)`` per row: the mixture in probability space (``weights [n, K]`` or
    ``[1, K]``; a zero weight drops its teacher)."""
    lw = weights.to(logprobs[0].dtype).log()
    out = logprobs[0] + lw[:, 0:1]
    for k in range(1, len(logprobs)):
        out = torch.logaddexp(out, logprobs[k] + lw[:, k:k + 1])
    return out


def merge_topk(parts: list[TopK], weights: torch.Tensor, vocab: int) -> TopK:
    """The mixture of top-k teacher rows as one :class:`TopK` of ``S = sum_k k_k`` distinct ids per row
    (all V ids, tail empty, when 2S > V), sorted descending, with the exact tail mass of the uniform-tail
    completion (module docstring). ``weights [n, K]`` (or ``[1, K]``). Computed in float64; returned in the
    parts' dtype."""
    n = parts[0].ids.shape[0]
    dt = torch.float64
    dev = parts[0].ids.device
    w = weights.to(device=dev, dtype=dt).expand(n, len(parts))
    u = torch.stack([_uniform_share(p.to(dtype=dt), vocab) for p in parts], -1)  # [n, K]
    base = (w * u).sum(-1)  # mixture probability of an id in no teacher's top-k
    ids = torch.cat([p.ids.long() for p in parts], -1)  # [n, S]
    contrib = torch.cat([w[:, i:i + 1] * (p.logprobs.to(dt).exp() - u[:, i:i + 1]) for i, p in enumerate(parts)], -1)
    s_tot = ids.shape[1]
    out_dt = parts[0].logprobs.dtype
    if 2 * s_tot > vocab:  # the union may cover most of the vocabulary: the dense mixture, all V ids
        dense = base[:, None].expand(n, vocab).clone().scatter_add_(1, ids, contrib)
        vals, order = dense.sort(-1, descending=True)
        tail = torch.full((n,), float("-inf"), dtype=dt, device=dev)
        return TopK(order, vals.log().to(out_dt), tail.to(out_dt))
    sid, order = ids.sort(-1)
    sc = contrib.gather(-1, order)
    first = torch.ones_like(sid, dtype=torch.bool)
    first[:, 1:] = sid[:, 1:] != sid[:, :-1]
    grp = first.long().cumsum(-1) - 1  # union slot of each entry
    summed = torch.zeros((n, s_tot), dtype=dt, device=dev).scatter_add_(1, grp, sc)
    uniq = torch.zeros((n, s_tot + 1), dtype=torch.long, device=dev)
    uniq.scatter_(1, grp, sid)
    n_uniq = first.sum(-1)
    # fill slots n_uniq.. with ids outside the union (carrying the base share): among 0..2S-1 at least S are
    # outside a union of at most S ids; an id not taken is written to the spare column S and dropped
    cand = torch.arange(2 * s_tot, device=dev)
    free = ~(sid[:, :, None] == cand[None, None, :]).any(1)
    rank = free.long().cumsum(-1) - 1
    take = free & (rank < (s_tot - n_uniq)[:, None])
    slot = torch.where(take, n_uniq[:, None] + rank, torch.full_like(rank, s_tot))
    uniq.scatter_(1, slot, cand.expand(n, -1))
    mixed = base[:, None] + summed
    tail = ((vocab - s_tot) * base).log()
    vals, order = mixed.sort(-1, descending=True)
    return TopK(uniq[:, :s_tot].gather(-1, order), vals.log().to(out_dt), tail.to(out_dt))


# ----------------------------------------------------------------------------------------------- signals
class _Stats:
    """Running sum of each teacher's mixing weight over the training tokens (rows scored with gradients)."""

    def __init__(self, k: int) -> None:
        self.weight_sum = torch.zeros(k, dtype=torch.float64)
        self.tokens = 0

    def add(self, w: torch.Tensor, n: int) -> None:
        if torch.is_grad_enabled():  # training micro-batches; held-out passes run under no_grad
            self.weight_sum += (w.expand(n, -1) if w.shape[0] == 1 else w).sum(0).double().cpu()
            self.tokens += n

    def means(self) -> list[float] | None:
        return (self.weight_sum / self.tokens).tolist() if self.tokens else None


def _row_weights(spec: MultiTeacherSpec, prior: torch.Tensor, mb: MicroBatch,
                 scores: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Per-row weights ``[n, K]`` (``[1, K]`` for fixed mixing); ``scores()`` gives ``(entropy [n, K],
    gold log-prob [n, K])``."""
    if spec.mixing == "fixed":
        return mixing_weights(None, prior, spec.tau)
    ent, gold = scores()
    example = mb.mask.nonzero()[:, 0]  # the row-major order of [mask] indexing
    per = example_means(-ent if spec.mixing == "confidence" else gold, example, mb.mask.shape[0])
    return mixing_weights(per, prior.to(per.device), spec.tau)[example]


@dataclass(frozen=True)
class MultiTargets:
    """Each teacher's targets of the valid rows and the per-row weights; ``chunk(a, e)`` is the mixture's
    log-probs ``[e-a, V]`` (a teacher's "logits" for every loss)."""

    parts: list[Any]
    weights: torch.Tensor

    def teacher_chunk(self, k: int, a: int, e: int) -> torch.Tensor:
        return torch.log_softmax(self.parts[k].chunk(a, e).float(), dim=-1)

    def row_weights(self, a: int, e: int) -> torch.Tensor:
        return self.weights if self.weights.shape[0] == 1 else self.weights[a:e]

    def chunk(self, a: int, e: int) -> torch.Tensor:
        return mix_logprobs([self.teacher_chunk(k, a, e) for k in range(len(self.parts))], self.row_weights(a, e))


class MultiOnline:
    """Online multi-teacher signal: ``teachers`` are :class:`OnlineTeacher` signals (each with its own
    scratch buffers); ``chunk`` rows at a time for the weight pass."""

    def __init__(self, teachers: list[OnlineTeacher], spec: MultiTeacherSpec, prior: torch.Tensor, *,
                 chunk: int = 1024) -> None:
        self.teachers, self.spec, self.prior, self.chunk = teachers, spec, prior.double(), chunk
        self.stats = _Stats(len(teachers))

    def targets(self, mb: MicroBatch) -> MultiTargets:
        parts = [t.targets(mb) for t in self.teachers]

        def scores() -> tuple[torch.Tensor, torch.Tensor]:
            ent, gold = [], []
            with torch.no_grad():
                for k in range(len(parts)):
                    e_k, g_k = [], []
                    for a in range(0, mb.n, self.chunk):
                        e = min(mb.n, a + self.chunk)
                        x, y = dense_scores(parts[k].chunk(a, e).float(), mb.labels[a:e])
                        e_k.append(x)
                        g_k.append(y)
                    ent.append(torch.cat(e_k))
                    gold.append(torch.cat(g_k))
            return torch.stack(ent, -1).double(), torch.stack(gold, -1).double()

        w = _row_weights(self.spec, self.prior.to(mb.input_ids.device), mb, scores).float()
        self.stats.add(w, mb.n)
        return MultiTargets(parts, w)


def online_signal(models: list[Any], spec: MultiTeacherSpec, prior: torch.Tensor, *, vocab: int,
                  device: torch.device, amp: torch.dtype | None = None, chunk: int = 1024) -> MultiOnline:
    """A :class:`MultiOnline` over causal LMs ``models`` (moved to ``device``, frozen, eval mode; each with its
    own scratch buffers), e.g. ``DistillTrainer(cfg, student, data, signal=online_signal(...))``."""
    from curate.models.causal_lm import lm_parts

    def autocast() -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if amp is None else torch.autocast(device.type, dtype=amp)

    online = []
    for m in models:
        m = m.to(device).eval()
        for q in m.parameters():
            q.requires_grad_(False)
        online.append(OnlineTeacher(m, vocab=vocab, device=device, parts=lm_parts(m), autocast=autocast, amp=amp,
                                    scratch=Scratch(device)))
    return MultiOnline(online, spec, prior, chunk=chunk)


class MultiCachedTopK:
    """Cached multi-teacher signal: each teacher's top-k cache rows, merged (:func:`merge_topk`); batches
    without example indices (on-policy samples, held-out data) go to ``fallback``."""

    def __init__(self, caches: list[Any], spec: MultiTeacherSpec, prior: torch.Tensor, *, vocab: int,
                 device: torch.device, fallback: TeacherSignal | None = None) -> None:
        self.readers = [CachedTopK(c, device=device) for c in caches]
        self.spec, self.prior, self.vocab, self.fallback = spec, prior.double(), vocab, fallback
        self.stats = _Stats(len(caches))

    def targets(self, mb: MicroBatch) -> Any:
        if mb.idx is None:
            return self.fallback.targets(mb) if self.fallback is not None else None
        parts = [r.targets(mb).topk for r in self.readers]

        def scores() -> tuple[torch.Tensor, torch.Tensor]:
            both = [topk_scores(p.to(dtype=torch.float64), mb.labels, self.vocab) for p in parts]
            return torch.stack([b[0] for b in both], -1), torch.stack([b[1] for b in both], -1)

        w = _row_weights(self.spec, self.prior.to(mb.input_ids.device), mb, scores)
        self.stats.add(w, mb.n)
        return TopKTargets(merge_topk(parts, w, self.vocab))


# ----------------------------------------------------------------------------------------------- the run
@dataclass
class MultiTeacher:
    """The teachers of a run (loaded, tokenizers checked), their caches, the signal and the report."""

    cfg: DistillConfig
    names: list[str]
    models: list[Any]          # on CPU in the loaded dtype: the held-out report uses these
    train_models: list[Any]    # the training copies (teacher_signal.dtype)
    prior: torch.Tensor
    vocab: int
    caches: list[Any] | None = None
    signal: Any = None

    @classmethod
    def setup(cls, cfg: DistillConfig, p: Any, first_train: Any) -> MultiTeacher:
        """Load ``cfg.teachers[1:]`` (the first is ``p.teacher``), check they share ``p.tokenizer``, narrow
        ``p.vocab`` to the logits every model has, and build one cache per teacher in cache mode."""
        from curate.models.causal_lm import load_causal_lm, shared_vocab, vocab_rows

        assert cfg.teachers is not None
        models, trains = [p.teacher], [first_train]
        ref = p.tokenizer.get_vocab()
        vocab = p.vocab
        for i, spec in enumerate(cfg.teachers[1:], start=1):
            m, tok, _ = load_causal_lm(spec, device="cpu")
            if tok is None:
                raise ConfigError(f"teachers[{i}] ({spec.name}) has no tokenizer: give teachers[{i}].tokenizer")
            if tok.get_vocab() != ref:
                tv = tok.get_vocab()
                raise ConfigError(
                    f"teachers[{i}] ({spec.name}) has another tokenizer than teachers[0] "
                    f"({len(tv)} vs {len(ref)} tokens, {len(set(tv.items()) - set(ref.items()))} token->id pairs "
                    "differ): multi-teacher KD mixes distributions over one vocabulary. For a teacher of "
                    "another tokenizer use cross-tokenizer KD (ULD/GOLD) instead")
            vocab = min(vocab, shared_vocab(p.tokenizer, tok, vocab_rows(p.teacher), vocab_rows(m)))
            models.append(m)
            trains.append(m if cfg.teacher_signal.dtype == "auto"
                          else copy.deepcopy(m).to(getattr(torch, cfg.teacher_signal.dtype)))
        p.vocab = vocab
        prior = torch.tensor([t.weight for t in cfg.teachers], dtype=torch.float64)
        mt = cls(cfg, [str(t.name) for t in cfg.teachers], models, trains, prior / prior.sum(), vocab)
        if cfg.teacher_signal.mode == "cache":
            mt.caches = mt._build_caches(p)
        return mt

    def _build_caches(self, p: Any) -> list[Any]:
        from curate.distill.prepare import build_cache

        cfg = self.cfg
        assert cfg.teachers is not None and cfg.teacher_signal.dir
        out = []
        for spec, name, model in zip(cfg.teachers, self.names, self.models, strict=True):
            ts = cfg.teacher_signal.model_copy(update={"dir": str(Path(cfg.teacher_signal.dir) / name)})
            one = cfg.model_copy(update={"teacher": spec, "teacher_signal": ts})
            out.append(build_cache(one, dataclasses.replace(p, teacher=model)))
        return out

    def make_signal(self, device: torch.device, amp: torch.dtype | None) -> Any:
        """The training signal on ``device`` (autocast to ``amp``, None = fp32): online teachers, or the merged
        caches with the online teachers as fallback (on-policy samples, held-out data)."""
        spec = self.cfg.multi_teacher or MultiTeacherSpec()
        on = online_signal(self.train_models, spec, self.prior, vocab=self.vocab, device=device, amp=amp,
                           chunk=self.cfg.loss.chunk_tokens)
        self.online = on
        self.signal = on if self.caches is None else MultiCachedTopK(self.caches, spec, self.prior, vocab=self.vocab,
                                                                      device=device, fallback=on)
        return self.signal

    def train_weights(self) -> list[float] | None:
        """Mean mixing weight per teacher over the training tokens (cached rows and, through the fallback,
        on-policy samples); None before any training step."""
        stats = [self.online.stats] + ([self.signal.stats] if self.signal is not self.online else [])
        tokens = sum(s.tokens for s in stats)
        return (sum(s.weight_sum for s in stats) / tokens).tolist() if tokens else None

    @torch.no_grad()
    def contributions(self, student: Any, data: TokenData, *, device: torch.device, pad_id: int) -> dict[str, Any]:
        """Held-out contribution of each teacher (module docstring) with the training weights' rule."""
        from curate.distill.losses import forward_kl

        ev = self.cfg.eval
        sig = self.online
        if any(m is not t for m, t in zip(self.models, self.train_models, strict=True)):
            # teacher_signal.dtype trained on reduced-precision copies; the report uses the loaded teachers
            from curate.distill.trainer import autocast_dtype

            sig = online_signal(self.models, self.cfg.multi_teacher or MultiTeacherSpec(), self.prior,
                                vocab=self.vocab, device=device, amp=autocast_dtype(self.cfg.precision, device),
                                chunk=self.cfg.loss.chunk_tokens)
        k = len(self.names)
        w_sum = torch.zeros(k, dtype=torch.float64)
        kl = torch.zeros(k, dtype=torch.float64)
        nll = torch.zeros(k, dtype=torch.float64)
        kl_mix = 0.0
        n_tok = 0
        student.eval()
        nb = math.ceil(len(data) / ev.batch_size)
        if ev.max_batches:
            nb = min(nb, ev.max_batches)
        for j in range(nb):
            idx = range(j * ev.batch_size, min(len(data), (j + 1) * ev.batch_size))
            b: dict[str, Any] = collate([data.seqs[i] for i in idx], [data.n_prompt[i] for i in idx], pad_id)
            b["idx"] = None
            mb = MicroBatch.of(b, device)
            if mb.n == 0:
                continue
            tg = sig.targets(mb)
            s_rows = student(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits[:, :-1][mb.mask]
            for a in range(0, mb.n, self.cfg.loss.chunk_tokens):
                e = min(mb.n, a + self.cfg.loss.chunk_tokens)
                s = s_rows[a:e, : self.vocab].float()
                lps = [tg.teacher_chunk(t, a, e) for t in range(k)]
                w = tg.row_weights(a, e).expand(e - a, k)
                w_sum += w.sum(0).double().cpu()
                for t, lp in enumerate(lps):
                    kl[t] += float(forward_kl(s, lp).sum())
                    nll[t] -= float(lp.gather(-1, mb.labels[a:e, None]).sum())
                kl_mix += float(forward_kl(s, mix_logprobs(lps, w)).sum())
            n_tok += mb.n
        train_w = self.train_weights()
        n = max(1, n_tok)
        rows = []
        for t, name in enumerate(self.names):
            spec = self.cfg.teachers[t] if self.cfg.teachers else None
            rows.append({"name": name, "path": getattr(spec, "path", None), "prior_weight": float(self.prior[t]),
                         "mean_weight_train": train_w[t] if train_w else None,
                         "mean_weight_eval": float(w_sum[t] / n), "eval_nll": float(nll[t] / n),
                         "eval_ppl": math.exp(min(float(nll[t] / n), 700.0)),
                         "kl_teacher_student": float(kl[t] / n)})
        spec = self.cfg.multi_teacher or MultiTeacherSpec()
        return {"mixing": spec.mixing, "tau": spec.tau, "signal": self.cfg.teacher_signal.mode,
                "tokens_scored": n_tok, "kl_mixture_student": kl_mix / n, "teachers": rows}


def build_caches(cfg: DistillConfig) -> list[Any]:
    """``curate distill-cache`` for ``teachers:``: build (or reuse) one top-k cache per teacher under
    ``teacher_signal.dir/<name>``; returns the TeacherCaches in teacher order."""
    from curate.distill.prepare import prepare

    if not cfg.teacher_signal.dir:
        raise ConfigError("teacher_signal.dir is not set (where the caches go)")
    p = prepare(cfg, need_student=False)
    cached = cfg.model_copy(update={"teacher_signal": cfg.teacher_signal.model_copy(update={"mode": "cache"})})
    mt = MultiTeacher.setup(cached, p, p.teacher)
    assert mt.caches is not None
    return mt.caches


def contributions_markdown(rep: dict[str, Any]) -> str:
    """The ``teachers`` section of report.json as a markdown table."""
    lines = ["", f"## Teachers (mixing: {rep['mixing']}, tau {rep['tau']:g}, signal: {rep['signal']})", "",
             "| teacher | prior weight | mean weight (train) | mean weight (held-out) | held-out ppl | "
             "KL(teacher \\|\\| student) |", "|---|---|---|---|---|---|"]

    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.4g}"

    for r in rep["teachers"]:
        lines.append(f"| {r['name']} | {f(r['prior_weight'])} | {f(r['mean_weight_train'])} | "
                     f"{f(r['mean_weight_eval'])} | {f(r['eval_ppl'])} | {f(r['kl_teacher_student'])} |")
    lines += ["", f"KL(mixture || student) on {rep['tokens_scored']:,} held-out tokens: {rep['kl_mixture_student']:.4g}"]
    return "\n".join(lines) + "\n"
