"""Teacher signals: the other half of a KD mode (see :mod:`curate.distill.trainer`).

A signal's one method, ``targets(batch)``, gives the teacher's side of one micro-batch for its valid rows
(:class:`MicroBatch`), as :class:`Targets`: an object whose ``chunk(a, e)`` is what the loss gets for rows
``a:e`` -- teacher logits ``[e-a, V]``, a :class:`TopK`, or anything a new loss understands. It returns
None when it has nothing for the batch (held-out data outside a cache), and the batch is then skipped by
evaluation.

* :class:`OnlineTeacher` -- an ``nn.Module`` causal LM (its hidden states are kept, ``[n, H]``, and its
  head is applied per chunk, so no ``[n, V]`` block is alive; models whose logits are not ``head(hidden)``
  give full logits), or a backend with ``logits(input_ids, attention_mask)``
  (:class:`curate.models.teacher.TeacherBackend`).
* :class:`CachedTopK` -- top-k teacher log-probs from a :class:`curate.distill.cache.TeacherCache`, rows
  looked up by training-example index; batches with no index (on-policy samples, held-out data) go to
  its ``fallback`` signal.
* :class:`OnPolicy` -- not a target but the batch the teacher scores: with probability ``fraction`` (a
  seeded generator, saved in checkpoints) a step's micro-batches are student samples continuing the
  prompts (GKD, Agarwal et al. 2024), which the online teacher then scores.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from curate.distill.config import OnPolicy as OnPolicySpec
from curate.distill.data import TokenData, collate, left_pad
from curate.distill.fused import Scratch, plain_head_weight
from curate.distill.stops import cut, stop_token_ids
from curate.models.causal_lm import IGNORE, hidden_states
from curate.models.topk import TopK

Autocast = Callable[[], contextlib.AbstractContextManager]


@dataclass(frozen=True)
class MicroBatch:
    """A collated micro-batch on the device; ``mask`` ``[B, T-1]`` marks the valid (shifted) positions,
    ``labels`` are the valid rows' targets ``[n]``, ``idx`` the training-example indices (None for
    on-policy samples and held-out data)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor
    idx: list[int] | None

    @classmethod
    def of(cls, b: dict[str, Any], device: torch.device) -> MicroBatch:
        lab = b["labels"].to(device)
        mask = lab[:, 1:] != IGNORE
        return cls(b["input_ids"].to(device), b["attention_mask"].to(device), mask, lab[:, 1:][mask], b["idx"])

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])


class Targets(Protocol):
    def chunk(self, a: int, e: int) -> Any:
        """What the loss gets as ``target`` for valid rows ``a:e``."""
        ...


class TeacherSignal(Protocol):
    def targets(self, mb: MicroBatch) -> Targets | None: ...


@dataclass(frozen=True)
class LogitTargets:
    """Full teacher logits ``[n, V]`` (float)."""

    logits: torch.Tensor

    def chunk(self, a: int, e: int) -> torch.Tensor:
        return self.logits[a:e]


@dataclass(frozen=True)
class TopKTargets:
    """Top-k teacher log-probs of the valid rows."""

    topk: TopK

    def chunk(self, a: int, e: int) -> TopK:
        return self.topk[a:e]


@dataclass(frozen=True)
class HiddenTargets:
    """Teacher hidden states ``[n, H]``; ``head`` makes a chunk's logits ``[e-a, V]`` when asked."""

    hidden: torch.Tensor
    head: Callable[[torch.Tensor], torch.Tensor]

    def chunk(self, a: int, e: int) -> torch.Tensor:
        return self.head(self.hidden[a:e])


class OnlineTeacher:
    """Runs the teacher on each micro-batch (see the module docstring); logits sliced to ``vocab`` ids."""

    def __init__(self, teacher: Any, *, vocab: int, device: torch.device, parts: tuple[Any, Any] | None,
                 autocast: Autocast, amp: torch.dtype | None, scratch: Scratch) -> None:
        self.teacher, self.vocab, self.device, self.parts = teacher, vocab, device, parts
        self.autocast, self.amp, self.scratch = autocast, amp, scratch

    def targets(self, mb: MicroBatch) -> Targets:
        ids, att, mask = mb.input_ids, mb.attention_mask, mb.mask
        with torch.no_grad(), self.autocast():
            if self.parts is not None:
                return HiddenTargets(hidden_states(self.parts[0], ids, att)[:, :-1][mask], self.head)
            if isinstance(self.teacher, torch.nn.Module):
                lo = self.teacher(input_ids=ids, attention_mask=att).logits
            else:
                lo = torch.as_tensor(self.teacher.logits(ids, att)).to(self.device)
            return LogitTargets(lo[:, :-1][mask][:, : self.vocab].float())

    @torch.no_grad()
    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Teacher logits ``[n, vocab]`` (float) of hidden rows ``h``; on CPU in fp32 into a reused buffer."""
        assert self.parts is not None
        head = self.parts[1]
        w = plain_head_weight(head, h, self.amp)
        if w is not None:
            out = self.scratch.get("t", h.shape[0], w.shape[0], torch.float32)
            return torch.mm(h, w.t(), out=out)[:, : self.vocab]  # = F.linear(h, w)
        with self.autocast():
            t = head(h)
        return t[:, : self.vocab].float()


class CachedTopK:
    """Top-k rows of a teacher cache (``cache[i].topk``: ``TopK [len(seq_i), k]``, position t = prediction of
    token t+1); batches without example indices go to ``fallback`` (None: no signal for them)."""

    def __init__(self, cache: Any, *, device: torch.device, fallback: TeacherSignal | None = None) -> None:
        self.cache, self.device, self.fallback = cache, device, fallback

    def targets(self, mb: MicroBatch) -> Targets | None:
        if mb.idx is None:
            return self.fallback.targets(mb) if self.fallback is not None else None
        rows = [self.cache[i].topk for i in mb.idx]
        lmax = mb.input_ids.shape[1]
        k = rows[0].k
        tid = torch.zeros((len(rows), lmax, k), dtype=torch.long)
        tlp = torch.zeros((len(rows), lmax, k), dtype=torch.float32)
        tail = torch.full((len(rows), lmax), float("-inf"))
        for r, t in enumerate(rows):
            n = t.ids.shape[0]
            tid[r, :n], tlp[r, :n], tail[r, :n] = t.ids.long(), t.logprobs.float(), t.tail_logmass.float()
        m = mb.mask.cpu()
        return TopKTargets(TopK(tid[:, :-1][m], tlp[:, :-1][m], tail[:, :-1][m]).to(self.device))


class OnPolicy:
    """GKD on-policy batches (see the module docstring); ``fraction`` 0 never draws a rollout."""

    def __init__(self, spec: OnPolicySpec, fraction: float, *, seed: int, pad_id: int, eos_id: int | None) -> None:
        self.spec, self.fraction, self.pad_id, self.eos_id = spec, fraction, pad_id, eos_id
        self.generator = torch.Generator().manual_seed(seed)

    def draw(self) -> bool:
        """Whether this step's batch is replaced by student samples (one seeded draw per step)."""
        return self.fraction > 0 and float(torch.rand((), generator=self.generator)) < self.fraction

    @torch.no_grad()
    def rollout(self, student: Any, data: TokenData, idx: list[int], *, device: torch.device,
                autocast: Autocast) -> dict[str, Any]:
        """Student samples continuing the prompts of examples ``idx``, collated (``idx`` None: not cached)."""
        op = self.spec
        prompts = []
        for i in idx:
            n_p = data.n_prompt[i] or min(op.prompt_tokens, len(data.seqs[i]) - 1)
            prompts.append(data.seqs[i][:max(1, n_p)])
        ids, att = left_pad(prompts, self.pad_id)
        lp = ids.shape[1]
        was_training = student.training
        student.eval()
        kw: dict[str, Any] = {"pad_token_id": self.pad_id}
        stops = stop_token_ids(op.stop_token_ids, eos_id=self.eos_id, model=student)
        if stops:
            kw["eos_token_id"] = stops
        with autocast():
            out = student.generate(input_ids=ids.to(device), attention_mask=att.to(device),
                                   max_new_tokens=op.max_new_tokens, do_sample=True,
                                   temperature=op.temperature, top_p=op.top_p, top_k=0, **kw)
        student.train(was_training)
        gen = cut(out[:, lp:].cpu(), stops)  # up to the first stop id of any kind
        seqs, n_prompt = [], []
        for p, g in zip(prompts, gen, strict=True):
            if not g:
                g = [self.eos_id if self.eos_id is not None else self.pad_id]
            seqs.append(list(p) + g)
            n_prompt.append(len(p))
        b: dict[str, Any] = collate(seqs, n_prompt, self.pad_id)
        b["idx"] = None
        return b
