"""Fused KD paths of the trainer: autograd Functions with closed-form gradients, and reusable CPU buffers.

The reference losses (:mod:`curate.distill.losses`) let autograd differentiate through several ``[n, V]``
ops (log-softmaxes, kl_div, the top-k bucket scatter + logsumexp), each costing a forward and a backward
pass over the full vocabulary. In training the trainer uses two autograd Functions with the gradient
written in closed form (one ``[n, V]`` pass each), and the reference losses on what is left:

* full-vocabulary forward KL: d/ds KL(p^T || q^T) = (q^T * sum(p^T) - p^T) / T (exactly what autograd
  computes through kl_div + log_softmax); the loss value is the reference's own fused kl_div.
* top-k teacher: the student's log-probs coarsened to the k+1 buckets, log q_b, with
  d log q_b / d s_v = ([v in b] q_v / Q_b - q_v) / T; any bucket loss then runs on ``[n, k+1]`` tensors.

Both fall back to the reference when the inputs leave the case they handle (non-finite teacher logits,
empty rest bucket, BiLD, Hinton), so results are the reference's up to float rounding
(``tests/distill/test_fused_kd.py``). :class:`Scratch` holds the reused ``[n, V]`` buffers: on CPU a fresh
100 MB tensor costs more in page faults than the kernel that fills it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from curate.distill import losses as L
from curate.models.topk import TopK


def _log_softmax_into(x: torch.Tensor, temperature: float, out: torch.Tensor | None) -> torch.Tensor:
    """``log_softmax(x / T)`` written into ``out`` when given (same kernel, no fresh [n, V] allocation)."""
    x = x if temperature == 1.0 else x / temperature
    if out is None:
        return torch.log_softmax(x, dim=-1)
    return torch._log_softmax(x, -1, False, out=out)


class _ForwardKL(torch.autograd.Function):
    """KL(softmax(t/T) || softmax(s/T)) per row with a closed-form gradient for ``s``.

    ``ws``: None, or three ``[n, V]`` scratch buffers (reused across chunks: on CPU a fresh 100 MB
    tensor costs more in page faults than the kernel that fills it)."""

    @staticmethod
    def forward(ctx: Any, s: torch.Tensor, t: torch.Tensor, temperature: float,
                ws: tuple[torch.Tensor, ...] | None) -> torch.Tensor:
        ls = _log_softmax_into(s, temperature, ws[0] if ws else None)
        lt = _log_softmax_into(t, temperature, ws[1] if ws else None)
        p = torch.exp(lt, out=ws[2]) if ws else lt.exp()
        # = kl_div(ls, lt, log_target=True).sum(-1), the same elementwise exp(lt) * (lt - ls), in place
        kl = lt.sub_(ls).mul_(p).sum(-1)
        ctx.temperature = temperature
        ctx.save_for_backward(ls.exp_(), p, p.sum(-1))  # q, p, sum(p)
        return kl

    @staticmethod
    def backward(ctx: Any, go: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        # autograd through kl_div + log_softmax gives (q * sum(p) - p) * go / T; q's buffer is reused
        q, p, psum = ctx.saved_tensors
        go = go if ctx.temperature == 1.0 else go / ctx.temperature
        grad = q.mul_((psum * go).unsqueeze(-1))
        grad.addcmul_(p, go.neg().unsqueeze(-1))
        return grad, None, None, None


class _TopKBuckets(torch.autograd.Function):
    """Student log-probs at temperature T over the k teacher ids plus a rest bucket: ``[n, k+1]``."""

    @staticmethod
    def forward(ctx: Any, s: torch.Tensor, ids: torch.Tensor, temperature: float,
                ws: torch.Tensor | None) -> torch.Tensor:
        ls = _log_softmax_into(s, temperature, ws)
        ls_k = ls.gather(-1, ids)
        q = ls.exp_().scatter_(-1, ids, 0.0)  # in place: q outside the k ids (backward rewrites the k ids)
        rest = q.sum(-1, keepdim=True)
        out = torch.cat([ls_k, rest.log()], dim=-1)
        ctx.temperature = temperature
        ctx.save_for_backward(q, ids, ls_k, rest)
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        q, ids, ls_k, rest = ctx.saved_tensors
        gsum = g.sum(-1, keepdim=True)
        grad = q.mul_(g[:, -1:] / rest - gsum)  # rest-bucket tokens (q's buffer is reused)
        grad.scatter_(-1, ids, g[:, :-1] - ls_k.exp() * gsum)  # top-k tokens: singleton buckets
        if ctx.temperature != 1.0:
            grad.div_(ctx.temperature)
        return grad, None, None, None


class HeadInto(torch.autograd.Function):
    """``F.linear(h, w)`` written into a reused buffer; the backward is ``F.linear``'s (two matmuls).

    ``grad_buf``: None, or a reused ``[V, H]`` buffer for the weight's gradient. With it (and ``w`` a leaf)
    the weight's gradient is written into ``w.grad`` in place -- the step's first contribution by
    ``mm(out=grad_buf)``, later chunks and micro-batches added by ``addmm_`` -- instead of a fresh
    ``[V, H]`` tensor per chunk that autograd then adds to ``w.grad``: on CPU that 50 MB block (SmolLM2's
    vocabulary x 256) was page-faulted in and summed at every step. The values are the same sums up to
    float rounding. Only for ``.backward()`` (the trainer's use), not ``torch.autograd.grad``."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, w: torch.Tensor, out: torch.Tensor,
                grad_buf: torch.Tensor | None = None) -> torch.Tensor:
        ctx.save_for_backward(h, w)
        ctx.param = w if grad_buf is not None and w.is_leaf else None
        ctx.grad_buf = grad_buf
        return torch.mm(h, w.t(), out=out)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        h, w = ctx.saved_tensors
        gh = g.mm(w) if ctx.needs_input_grad[0] else None
        gw = None
        if ctx.needs_input_grad[1]:
            p = ctx.param
            if p is None:
                gw = g.t().mm(h)
            elif p.grad is None:  # the step's first contribution: into the reused buffer
                p.grad = torch.mm(g.t(), h, out=ctx.grad_buf)
            else:
                p.grad.addmm_(g.t(), h)
        return gh, gw, None, None


def fused_kd(name: str, s: torch.Tensor, teacher: Any, kw: dict[str, Any],
             ws: Callable[[str], torch.Tensor] | None = None) -> torch.Tensor | None:
    """Per-row KD loss through the fused paths above, or None where the reference must be used.

    ``ws(name)``: an ``[n, V]`` float scratch buffer shaped like ``s`` (None: fresh tensors)."""
    temperature = float(kw["temperature"])
    if isinstance(teacher, TopK):
        n, v = s.shape
        k = teacher.k
        if name == "bild" or k >= v or teacher.ids.shape[0] != n:
            return None
        ids = teacher.ids.to(s.device).long()
        lsb = _TopKBuckets.apply(s, ids, temperature, ws('q') if ws else None)
        if not bool(torch.isfinite(lsb).all()):  # a rest bucket that underflowed: reference path
            return None
        lt = teacher.logprobs.to(device=s.device, dtype=s.dtype)
        tail = teacher.tail_logmass.to(device=s.device, dtype=s.dtype).unsqueeze(-1)
        if temperature != 1.0:  # the reference's tempered buckets (losses._topk_buckets)
            lt = lt / temperature
            tail = tail / temperature + (1.0 - 1.0 / temperature) * math.log(v - k)
        lpt = torch.cat([lt, tail], dim=-1)
        lpt = lpt - torch.logsumexp(lpt, dim=-1, keepdim=True)
        # the bucket loss itself: the reference on [n, k+1] "logits" whose first k ids are the teacher's
        buckets = TopK(torch.arange(k, device=s.device).expand(n, k), lpt[:, :k], lpt[:, k])
        return L.compute_kd_loss(name, lsb, buckets, **{**kw, "temperature": 1.0})
    # forward KL, and generalized JSD / skew KL at the settings where their definitions are forward KL
    fkl = name == "forward_kl" or (name == "generalized_jsd" and kw.get("beta") == 0.0) or (
        name == "skew_kl" and kw.get("alpha") == 0.0)
    if not fkl or not isinstance(teacher, torch.Tensor) or teacher.shape != s.shape:
        return None
    bufs = (ws('q'), ws('lt'), ws('p')) if ws else None
    kl = _ForwardKL.apply(s, teacher.detach().to(device=s.device, dtype=s.dtype), temperature, bufs)
    return kl if bool(torch.isfinite(kl).all()) else None


class Scratch:
    """Reusable contiguous ``[n, v]`` buffers by name, grown on demand (rows are a prefix view).

    ``min_rows``: the rows a buffer gets when first made (at least the rows asked for); the trainer passes
    the most rows a micro-batch chunk can have, so a later, larger batch does not re-allocate (and on
    CPU page-fault) a new ``[n, V]`` block."""

    def __init__(self, device: torch.device, min_rows: int = 0) -> None:
        self.device = device
        self.min_rows = int(min_rows)
        self._bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, n: int, v: int, dtype: torch.dtype) -> torch.Tensor:
        buf = self._bufs.get(name)
        if buf is None or buf.shape[0] < n or buf.shape[1] != v or buf.dtype != dtype:
            buf = torch.empty((max(n, self.min_rows), v), dtype=dtype, device=self.device)
            self._bufs[name] = buf
        return buf[:n]

    def like(self, t: torch.Tensor) -> Callable[[str], torch.Tensor] | None:
        """Buffers shaped like ``t`` on CPU; None on accelerators (their allocators cache)."""
        if t.device.type != "cpu" or t.dim() != 2:
            return None
        n, v = t.shape
        return lambda name: self.get(name, n, v, t.dtype)

    def clear(self) -> None:
        self._bufs.clear()


def plain_head_weight(head: Any, h: torch.Tensor, amp: torch.dtype | None) -> torch.Tensor | None:
    """The weight of ``head`` when its output can go into a reused CPU fp32 buffer (a bias-free
    ``nn.Linear`` on fp32 rows without autocast), else None."""
    w = getattr(head, "weight", None)
    if (amp is None and h.device.type == "cpu" and type(head) is torch.nn.Linear and head.bias is None
            and w is not None and w.dtype == h.dtype == torch.float32 and h.dim() == 2):
        return w
    return None
