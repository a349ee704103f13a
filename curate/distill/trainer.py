"""The distillation training loop (plain PyTorch; no HF Trainer).

One optimizer step = ``grad_accum`` micro-batches. The loss of a step is

    sum over valid tokens of the step's micro-batches of loss(token) / (number of those tokens)

so gradient accumulation is exactly a larger batch (not a mean of per-micro-batch means, TRL #4719).

Memory: the student's hidden states are detached at the output head; logits, the teacher's logits
and the loss are built ``loss.chunk_tokens`` tokens at a time and each chunk is back-propagated at
once, so only one ``[chunk, V]`` block is alive (not ``batch x seq x V``); the gradient of the hidden
states is then pushed through the network body in one backward. The teacher's hidden states are
kept (``[tokens, H]``, small) and its head applied per chunk too. Models whose logits are not
``head(hidden)`` (soft-capping, logit scaling) and teacher backends without hidden states use the
full-logits path.

Teacher signal: an online teacher (an ``nn.Module`` causal LM, or a backend with ``logits()``), or
top-k teacher log-probs from a :class:`curate.distill.cache.TeacherCache` (rows looked up by example
index). With ``on_policy_fraction`` > 0, each step's batch is replaced with that probability (from a
seeded generator) by student samples continuing the prompts (GKD), scored by the online teacher.

Checkpoints (``output_dir/checkpoint``): ``model.safetensors`` + ``state.pt`` (optimizer, scheduler,
grad scaler, step, data position, torch/CUDA RNG and the on-policy generator), loaded with
``torch.load(weights_only=True)``. The data order is a pure function of (seed, epoch), so a resumed
run continues with the same batches and reproduces an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from curate.distill import losses as L
from curate.distill.config import DistillConfig
from curate.distill.data import IGNORE, TokenData, collate
from curate.distill.models import hidden_states, lm_parts
from curate.distill.topk import TopK
from curate.metrics.perf import peak_memory_mb, reset_peak_memory

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision setting (None = fp32, no autocast)."""
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    return torch.bfloat16 if precision == "bf16" else torch.float16


def lr_lambda(step: int, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the base lr after ``step`` optimizer steps: linear warmup, then cosine/linear decay."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    span = max(1, total - warmup)
    frac = min(1.0, max(0.0, (step - warmup) / span))
    decay = 0.5 * (1.0 + math.cos(math.pi * frac)) if schedule == "cosine" else 1.0 - frac
    return min_ratio + (1.0 - min_ratio) * decay


class _Schedule:
    """Picklable-free callable for LambdaLR (its state_dict then holds only numbers)."""

    def __init__(self, warmup: int, total: int, schedule: str, min_ratio: float) -> None:
        self.warmup, self.total, self.schedule, self.min_ratio = warmup, total, schedule, min_ratio

    def __call__(self, step: int) -> float:
        return lr_lambda(step, self.warmup, self.total, self.schedule, self.min_ratio)


# ----------------------------------------------------------------------------------------------- fused KD paths
# The reference losses (curate.distill.losses) let autograd differentiate through several [n, V] ops
# (log-softmaxes, kl_div, the top-k bucket scatter + logsumexp), each costing a forward and a backward
# pass over the full vocabulary. In training the trainer uses two autograd Functions with the
# gradient written in closed form (one [n, V] pass each), and the reference losses on what is left:
#   * full-vocabulary forward KL: d/ds KL(p^T || q^T) = (q^T * sum(p^T) - p^T) / T (exactly what autograd
#     computes through kl_div + log_softmax); the loss value is the reference's own fused kl_div.
#   * top-k teacher: the student's log-probs coarsened to the k+1 buckets, log q_b, with
#     d log q_b / d s_v = ([v in b] q_v / Q_b - q_v) / T; any bucket loss then runs on [n, k+1] tensors.
# Both fall back to the reference when the inputs leave the case they handle (non-finite teacher
# logits, empty rest bucket, BiLD, Hinton), so results are the reference's up to float rounding.
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


class _HeadInto(torch.autograd.Function):
    """``F.linear(h, w)`` written into a reused buffer; the backward is ``F.linear``'s (two matmuls)."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, w: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(h, w)
        return torch.mm(h, w.t(), out=out)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        h, w = ctx.saved_tensors
        gh = g.mm(w) if ctx.needs_input_grad[0] else None
        gw = g.t().mm(h) if ctx.needs_input_grad[1] else None
        return gh, gw, None


def _fused_kd(name: str, s: torch.Tensor, teacher: Any, kw: dict[str, Any],
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


class DistillTrainer:
    """Trains ``student`` towards ``teacher`` (or a top-k ``cache``) on token data.

    ``teacher``: an ``nn.Module`` causal LM or an object with ``logits(input_ids, attention_mask)``
    (a :class:`curate.synth.teacher.TeacherBackend`); ``cache``: an object whose ``[i]`` gives the
    :class:`TopK` ``[len(seq_i), k]`` of training example ``i`` (position t = prediction of token t+1).
    ``vocab``: logits are sliced to this many ids (see :func:`curate.distill.models.shared_vocab`).
    """

    def __init__(self, cfg: DistillConfig, student: torch.nn.Module, train_data: TokenData, *,
                 teacher: Any = None, cache: Any = None, eval_data: TokenData | None = None,
                 vocab: int | None = None, pad_id: int = 0, eos_id: int | None = None) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        if cfg.threads and self.device.type == "cpu":
            torch.set_num_threads(cfg.threads)
        self.student = student.to(self.device)
        self.teacher = teacher
        if isinstance(teacher, torch.nn.Module):
            self.teacher = teacher.to(self.device).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        self.cache = cache
        self.train_data, self.eval_data = train_data, eval_data
        self.pad_id, self.eos_id = pad_id, eos_id
        name = cfg.loss.name
        if name != "ce" and teacher is None and cache is None:
            raise ValueError(f"loss '{name}' needs a teacher or a teacher cache")
        if cfg.on_policy_fraction > 0 and teacher is None:
            raise ValueError("on_policy_fraction > 0 needs an online teacher to score student samples")
        s_rows = self.student.get_output_embeddings().weight.shape[0]
        self.vocab = vocab or s_rows
        self.s_parts = lm_parts(self.student)
        self.t_parts = lm_parts(self.teacher) if isinstance(self.teacher, torch.nn.Module) else None
        self.amp = autocast_dtype(cfg.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp == torch.float16 else None
        bs = cfg.optim.batch_size
        self.batches_per_epoch = max(1, len(train_data) // bs)
        if cfg.optim.max_steps:
            self.total_steps = cfg.optim.max_steps
        else:
            self.total_steps = max(1, math.ceil(cfg.optim.epochs * self.batches_per_epoch / cfg.optim.grad_accum))
        o = cfg.optim
        decay = [p for n, p in self.student.named_parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for n, p in self.student.named_parameters() if p.requires_grad and p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=o.lr, betas=o.betas, fused=self.device.type in ("cuda", "cpu") or None)  # CPU fused: ~8x faster step
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _Schedule(o.warmup_steps, self.total_steps, o.schedule, o.min_lr_ratio))
        self.policy_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.step = 0
        self.micro_pos = 0
        self.tokens_seen = 0
        self.train_time = 0.0
        self._perm_cache: tuple[int, list[int]] | None = None
        self.out = Path(cfg.output_dir)
        self.history: list[dict[str, Any]] = []
        # reusable [rows, V] scratch for the loss on CPU (fresh big tensors cost page faults there)
        self._bufs: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ data
    def _perm(self, epoch: int) -> list[int]:
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
            self._perm_cache = (epoch, torch.randperm(len(self.train_data), generator=g).tolist())
        return self._perm_cache[1]

    def batch_indices(self, pos: int) -> list[int]:
        """Example indices of the ``pos``-th micro-batch of the run (deterministic in seed and pos)."""
        epoch, i = divmod(pos, self.batches_per_epoch)
        bs = self.cfg.optim.batch_size
        return self._perm(epoch)[i * bs:(i + 1) * bs]

    def _batch(self, idx: list[int]) -> dict[str, Any]:
        d = self.train_data
        b: dict[str, Any] = collate([d.seqs[i] for i in idx], [d.n_prompt[i] for i in idx], self.pad_id)
        b["idx"] = idx
        return b

    # ------------------------------------------------------------------ on-policy
    @torch.no_grad()
    def rollout(self, idx: list[int]) -> dict[str, Any]:
        """Student samples continuing the prompts of examples ``idx`` (GKD on-policy batch)."""
        op = self.cfg.on_policy
        d = self.train_data
        prompts = []
        for i in idx:
            n_p = d.n_prompt[i] or min(op.prompt_tokens, len(d.seqs[i]) - 1)
            prompts.append(d.seqs[i][:max(1, n_p)])
        lp = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), lp), self.pad_id, dtype=torch.long)
        att = torch.zeros_like(ids)
        for r, p in enumerate(prompts):  # left padding for generation
            ids[r, lp - len(p):] = torch.as_tensor(p)
            att[r, lp - len(p):] = 1
        was_training = self.student.training
        self.student.eval()
        kw: dict[str, Any] = {"pad_token_id": self.pad_id}
        if self.eos_id is not None:
            kw["eos_token_id"] = self.eos_id
        with self._autocast():
            out = self.student.generate(input_ids=ids.to(self.device), attention_mask=att.to(self.device),
                                        max_new_tokens=op.max_new_tokens, do_sample=True,
                                        temperature=op.temperature, top_p=op.top_p, top_k=0, **kw)
        self.student.train(was_training)
        gen = out[:, lp:].cpu().tolist()
        seqs, n_prompt = [], []
        for p, g in zip(prompts, gen, strict=True):
            if self.eos_id is not None and self.eos_id in g:
                g = g[: g.index(self.eos_id) + 1]
            elif self.pad_id in g and self.pad_id != self.eos_id:
                g = g[: g.index(self.pad_id)]
            if not g:
                g = [self.eos_id if self.eos_id is not None else self.pad_id]
            seqs.append(list(p) + g)
            n_prompt.append(len(p))
        b: dict[str, Any] = collate(seqs, n_prompt, self.pad_id)
        b["idx"] = None
        return b

    # ------------------------------------------------------------------ loss
    def _scratch(self, name: str, n: int, v: int, dtype: torch.dtype) -> torch.Tensor:
        """A reusable contiguous ``[n, v]`` buffer (grown on demand; rows are a prefix view)."""
        buf = self._bufs.get(name)
        if buf is None or buf.shape[0] < n or buf.shape[1] != v or buf.dtype != dtype:
            buf = torch.empty((n, v), dtype=dtype, device=self.device)
            self._bufs[name] = buf
        return buf[:n]

    def _scratch_for(self, like: torch.Tensor) -> Callable[[str], torch.Tensor] | None:
        """Scratch buffers shaped like ``like`` on CPU; None on accelerators (their allocators cache)."""
        if like.device.type != "cpu" or like.dim() != 2:
            return None
        n, v = like.shape
        return lambda name: self._scratch(name, n, v, like.dtype)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def per_token(self, s_logits: torch.Tensor, teacher: Any, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Per-token total loss ``[n]`` and detached component sums (0-d tensors) for logging."""
        ls = self.cfg.loss
        if ls.name == "ce":
            ce = L.token_ce(s_logits, labels)
            return ce, {"ce": ce.detach().sum()}
        if ls.name == "hinton":
            total = L.hinton_kd(s_logits, teacher, labels, alpha=ls.alpha, temperature=ls.temperature)
            return total, {}
        kw: dict[str, Any] = {"temperature": ls.temperature}
        if ls.name == "generalized_jsd":
            kw["beta"] = ls.beta
        elif ls.name in ("skew_kl", "skew_reverse_kl"):
            kw["alpha"] = ls.skew_alpha
        elif ls.name == "bild":
            kw["top_k"] = ls.top_k
        kd = None
        if torch.is_grad_enabled() and s_logits.requires_grad:
            kd = _fused_kd(L.loss_name(ls.name), s_logits, teacher, kw, self._scratch_for(s_logits))
        if kd is None:
            kd = L.compute_kd_loss(ls.name, s_logits, teacher, **kw)
        total = (1.0 - ls.alpha) * ls.temperature ** 2 * kd
        comp = {"kd": kd.detach().sum()}
        if ls.alpha > 0:  # no CE pass at all for pure KD (alpha = 0)
            ce = L.token_ce(s_logits, labels)
            total = total + ls.alpha * ce
            comp["ce"] = ce.detach().sum()
        return total, comp

    def _teacher_rows(self, b: dict[str, Any], ids: torch.Tensor, att: torch.Tensor, mask: torch.Tensor) -> Any:
        """Teacher signal for the valid rows: ('hidden', [n,Ht]) | ('logits', [n,V]) | ('topk', TopK) | None."""
        if self.cfg.loss.name == "ce":
            return None
        if b["idx"] is not None and self.cache is not None:
            rows = [self.cache[i].topk for i in b["idx"]]
            Lmax = ids.shape[1]
            k = rows[0].k
            tid = torch.zeros((len(rows), Lmax, k), dtype=torch.long)
            tlp = torch.zeros((len(rows), Lmax, k), dtype=torch.float32)
            tail = torch.full((len(rows), Lmax), float("-inf"))
            for r, t in enumerate(rows):
                n = t.ids.shape[0]
                tid[r, :n], tlp[r, :n], tail[r, :n] = t.ids.long(), t.logprobs.float(), t.tail_logmass.float()
            return "topk", TopK(tid[:, :-1][mask.cpu()], tlp[:, :-1][mask.cpu()], tail[:, :-1][mask.cpu()]).to(self.device)
        with torch.no_grad(), self._autocast():
            if self.t_parts is not None:
                h = hidden_states(self.t_parts[0], ids, att)
                return "hidden", h[:, :-1][mask]
            if isinstance(self.teacher, torch.nn.Module):
                lo = self.teacher(input_ids=ids, attention_mask=att).logits
            else:
                lo = torch.as_tensor(self.teacher.logits(ids, att)).to(self.device)
            return "logits", lo[:, :-1][mask][:, : self.vocab].float()

    def _plain_head(self, head: Any, h: torch.Tensor) -> torch.Tensor | None:
        """The weight of ``head`` when its output can go into a reused CPU fp32 buffer, else None."""
        w = getattr(head, "weight", None)
        if (self.amp is None and h.device.type == "cpu" and type(head) is torch.nn.Linear and head.bias is None
                and w is not None and w.dtype == h.dtype == torch.float32 and h.dim() == 2):
            return w
        return None

    def _student_head(self, h: torch.Tensor) -> torch.Tensor:
        """Student logits ``[n, vocab]`` (float) of hidden rows ``h``, with grad."""
        head = self.s_parts[1]
        w = self._plain_head(head, h)
        if w is not None:
            return _HeadInto.apply(h, w, self._scratch("s", h.shape[0], w.shape[0], torch.float32))[:, : self.vocab]
        with self._autocast():
            s_lo = head(h)
        return s_lo[:, : self.vocab].float()

    @torch.no_grad()
    def _teacher_head(self, h: torch.Tensor) -> torch.Tensor:
        """Teacher logits ``[n, vocab]`` (float) of hidden rows ``h``; on CPU in fp32 into a reused buffer."""
        head = self.t_parts[1]
        w = self._plain_head(head, h)
        if w is not None:
            out = self._scratch("t", h.shape[0], w.shape[0], torch.float32)
            return torch.mm(h, w.t(), out=out)[:, : self.vocab]  # = F.linear(h, w)
        with self._autocast():
            t = head(h)
        return t[:, : self.vocab].float()

    def _micro(self, b: dict[str, Any], n_total: int) -> dict[str, float]:
        ids = b["input_ids"].to(self.device)
        att = b["attention_mask"].to(self.device)
        lab = b["labels"].to(self.device)
        mask = lab[:, 1:] != IGNORE
        n = int(mask.sum())
        if n == 0:
            return {}
        with self._autocast():
            if self.s_parts is not None:
                rows = hidden_states(self.s_parts[0], ids, att)[:, :-1][mask]
            else:
                rows = self.student(input_ids=ids, attention_mask=att).logits[:, :-1][mask]
        labels = lab[:, 1:][mask]
        tsig = self._teacher_rows(b, ids, att, mask)
        rows_d = rows.detach().requires_grad_(True)
        sums: dict[str, Any] = {"loss": 0.0}
        chunk = self.cfg.loss.chunk_tokens
        for a in range(0, n, chunk):
            e = min(n, a + chunk)
            if self.s_parts is not None:
                s_lo = self._student_head(rows_d[a:e])
            else:
                s_lo = rows_d[a:e][:, : self.vocab].float()
            t = None
            if tsig is not None:
                kind, val = tsig
                if kind == "hidden":
                    t = self._teacher_head(val[a:e])
                elif kind == "logits":
                    t = val[a:e]
                else:
                    t = val[a:e]
            per, comp = self.per_token(s_lo, t, labels[a:e])
            loss = per.sum() / n_total
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            sums["loss"] = sums["loss"] + per.detach().sum()
            for k, v in comp.items():
                sums[k] = sums.get(k, 0.0) + v
        if rows_d.grad is not None:
            rows.backward(rows_d.grad)
        out = {k: float(v) for k, v in sums.items()}  # one device sync per micro-batch
        out["tokens"] = float(att.sum())
        return out

    # ------------------------------------------------------------------ loop
    def train_step(self) -> dict[str, Any]:
        """One optimizer step over ``grad_accum`` micro-batches; returns the logged record."""
        ga = self.cfg.optim.grad_accum
        frac = self.cfg.on_policy_fraction
        on_policy = frac > 0 and float(torch.rand((), generator=self.policy_gen)) < frac
        micro = []
        for j in range(ga):
            idx = self.batch_indices(self.micro_pos + j)
            micro.append(self.rollout(idx) if on_policy else self._batch(idx))
        self.micro_pos += ga
        n_total = sum(int((m["labels"][:, 1:] != IGNORE).sum()) for m in micro)
        self.student.train()
        sums: dict[str, float] = {}
        for m in micro:
            for k, v in self._micro(m, max(1, n_total)).items():
                sums[k] = sums.get(k, 0.0) + v
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        gnorm = None
        if self.cfg.optim.clip:
            gnorm = float(torch.nn.utils.clip_grad_norm_(self.student.parameters(), self.cfg.optim.clip))
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        tok = int(sums.pop("tokens", 0))
        self.tokens_seen += tok
        nt = max(1, n_total)
        rec: dict[str, Any] = {"step": self.step, "loss": sums.get("loss", 0.0) / nt, "lr": lr,
                               "tokens": tok, "valid_tokens": n_total, "on_policy": on_policy}
        for k in ("ce", "kd"):
            if k in sums:
                rec[k] = sums[k] / nt
        if gnorm is not None:
            rec["grad_norm"] = gnorm
        return rec

    def train(self, resume: bool = False, max_steps: int | None = None,
              on_step: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Train to ``total_steps`` (or stop after ``max_steps`` more); checkpoints and logs as configured."""
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        ck = self.out / "checkpoint"
        if resume:
            if not (ck / "state.pt").is_file():
                raise FileNotFoundError(f"--resume: no checkpoint at {ck}")
            self.load_checkpoint(ck)
            log.info("resumed from %s at step %d", ck, self.step)
        metrics_path = self.out / "metrics.jsonl"
        _truncate_metrics(metrics_path, self.step if resume else 0)
        stop = self.total_steps if max_steps is None else min(self.total_steps, self.step + max_steps)
        reset_peak_memory(str(self.device))
        progress = _progress(cfg.progress, stop, self.step)
        with progress as bar, open(metrics_path, "a", encoding="utf-8") as mf:
            task = bar.add_task("distill", total=stop, completed=self.step, loss=float("nan"), tps=0.0) if bar else None
            while self.step < stop:
                t0 = time.perf_counter()
                rec = self.train_step()
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                self.train_time += dt
                rec["tok_per_s"] = rec["tokens"] / dt if dt > 0 else float("nan")
                rec["elapsed_s"] = round(self.train_time, 3)
                if cfg.eval.every_steps and self.step % cfg.eval.every_steps == 0 and self.eval_data is not None:
                    rec.update({f"eval_{k}": v for k, v in self.eval_loss().items()})
                self.history.append(rec)
                if self.step % cfg.log_every == 0 or self.step == stop:
                    mf.write(json.dumps(rec) + "\n")
                    mf.flush()
                if bar:
                    bar.update(task, completed=self.step, loss=rec["loss"],
                               tps=self.tokens_seen / max(self.train_time, 1e-9))
                if on_step:
                    on_step(rec)
                if cfg.save_every and self.step % cfg.save_every == 0 and self.step < stop:
                    self.save_checkpoint(ck)
        self.save_checkpoint(ck)
        self._bufs.clear()  # the loss scratch is not needed after training
        summary = {"steps": self.step, "total_steps": self.total_steps,
                   "final_loss": self.history[-1]["loss"] if self.history else None,
                   "train_tokens": self.tokens_seen, "train_s": self.train_time,
                   "train_tokens_per_s": self.tokens_seen / self.train_time if self.train_time else None,
                   "peak_memory_mb": peak_memory_mb(str(self.device)), "device": str(self.device)}
        if cfg.plot:
            plot_losses(metrics_path, self.out / "loss.png")
        return summary

    @torch.no_grad()
    def eval_loss(self) -> dict[str, float]:
        """Held-out mean per-token training loss (same objective) and student CE."""
        assert self.eval_data is not None
        self.student.eval()
        tot: dict[str, float] = {}
        n = 0
        bs = self.cfg.eval.batch_size
        d = self.eval_data
        nb = math.ceil(len(d) / bs)
        if self.cfg.eval.max_batches:
            nb = min(nb, self.cfg.eval.max_batches)
        for j in range(nb):
            idx = list(range(j * bs, min(len(d), (j + 1) * bs)))
            b = collate([d.seqs[i] for i in idx], [d.n_prompt[i] for i in idx], self.pad_id)
            b["idx"] = None
            ids, att, lab = (b[k].to(self.device) for k in ("input_ids", "attention_mask", "labels"))
            mask = lab[:, 1:] != IGNORE
            with self._autocast():
                lo = self.student(input_ids=ids, attention_mask=att).logits[:, :-1][mask][:, : self.vocab].float()
            t = None
            if self.cfg.loss.name != "ce" and self.teacher is not None:
                kind, val = self._teacher_rows(b, ids, att, mask)
                if kind == "hidden":
                    with self._autocast():
                        val = self.t_parts[1](val)[:, : self.vocab].float()
                t = val
            elif self.cfg.loss.name != "ce":
                continue
            per, comp = self.per_token(lo, t, lab[:, 1:][mask])
            tot["loss"] = tot.get("loss", 0.0) + float(per.sum())
            for k, v in comp.items():
                tot[k] = tot.get(k, 0.0) + float(v)
            n += int(mask.sum())
        self.student.train()
        return {k: v / max(1, n) for k, v in tot.items()}

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, path: str | Path) -> None:
        from safetensors.torch import save_model

        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_model(self.student, str(tmp / "model.safetensors"))
        state: dict[str, Any] = {
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "step": self.step, "micro_pos": self.micro_pos, "tokens_seen": self.tokens_seen,
            "train_time": self.train_time, "total_steps": self.total_steps,
            "rng_torch": torch.get_rng_state(), "policy_gen": self.policy_gen.get_state(),
            "history": json.dumps(self.history),
        }
        if torch.cuda.is_available():
            state["rng_cuda"] = torch.cuda.get_rng_state_all()
        if self.scaler:
            state["scaler"] = self.scaler.state_dict()
        torch.save(state, tmp / "state.pt")
        old = path.with_name(path.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self, path: str | Path) -> None:
        from safetensors.torch import load_model

        path = Path(path)
        old = path.with_name(path.name + ".old")
        if not path.exists() and old.exists():  # a crash between the two renames of save_checkpoint
            path = old
        load_model(self.student, str(path / "model.safetensors"), device=str(self.device))
        state = torch.load(path / "state.pt", weights_only=True, map_location="cpu")
        if state["total_steps"] != self.total_steps:
            log.warning("checkpoint was made for %d total steps, config gives %d (lr schedule changes)",
                        state["total_steps"], self.total_steps)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.micro_pos = int(state["step"]), int(state["micro_pos"])
        self.tokens_seen, self.train_time = int(state["tokens_seen"]), float(state["train_time"])
        torch.set_rng_state(state["rng_torch"])
        self.policy_gen.set_state(state["policy_gen"])
        if "rng_cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        if self.scaler and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.history = json.loads(state.get("history", "[]"))


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep metrics lines up to ``step`` (a resumed run rewrites what came after its checkpoint)."""
    if not path.exists():
        return
    if step == 0:
        path.unlink()
        return
    keep = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln and json.loads(ln).get("step", 0) <= step]
    path.write_text("".join(ln + "\n" for ln in keep), encoding="utf-8")


def _progress(enabled: bool, total: int, done: int) -> Any:
    if not enabled:
        return contextlib.nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[tps]:.0f} tok/s"),
                    TimeRemainingColumn(), transient=False)


def plot_losses(metrics_path: Path, png: Path) -> Path | None:
    """Loss curves (train loss, CE, KD, eval loss) from metrics.jsonl as a PNG; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: skipping the loss plot (pip install matplotlib)")
        return None
    recs = [json.loads(ln) for ln in metrics_path.read_text(encoding="utf-8").splitlines() if ln]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in ("loss", "ce", "kd", "eval_loss"):
        pts = [(r["step"], r[key]) for r in recs if key in r]
        if pts:
            ax.plot(*zip(*pts, strict=True), label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("nats / token")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png
