"""The distillation training loop (plain PyTorch; no HF Trainer), written once for every KD mode.

One optimizer step = ``grad_accum`` micro-batches. The loss of a step is

    sum over valid tokens of the step's micro-batches of loss(token) / (number of those tokens)

so gradient accumulation is exactly a larger batch (not a mean of per-micro-batch means, TRL #4719).

**The seam: a KD mode is a loss and a teacher signal.** As TRL's trainers override ``compute_loss``, a
mode here is two objects handed to :class:`DistillTrainer` (``loss=``, ``signal=``), and the loop
(batches, chunking, backward, accumulation, clipping, checkpoints, logging, evaluation) never changes:

* the signal (:mod:`curate.distill.signals`) has one method, ``targets(micro_batch)``, giving the
  teacher's side of the batch's valid rows as an object whose ``chunk(a, e)`` the loss receives
  (:class:`~curate.distill.signals.OnlineTeacher`, :class:`~curate.distill.signals.CachedTopK`);
* the loss (:mod:`curate.distill.objective`) maps ``(student_logits [n, V], chunk target, labels [n])`` to a
  per-token loss and detached component sums (:class:`~curate.distill.objective.SpecLoss`, the YAML
  ``loss:`` section).

Later modes fit this without touching the loop: multi-teacher = a signal whose ``chunk`` returns one
target per teacher + a loss mixing them; self-distillation = an ``OnlineTeacher`` over a frozen/EMA copy
of the student; uncertainty weighting = a loss weighting tokens by the teacher's entropy; rationale
distillation = a signal carrying each row's task + a loss weighting label and rationale rows. What is
trained on can change too: :class:`~curate.distill.signals.OnPolicy` replaces a step's batch with student
samples (GKD) before the signal scores it. A third, optional object, ``aux=``, adds a term computed on the
forward itself with its own trained parameters (hidden-state KD: :mod:`curate.distill.hidden`); it is
back-propagated with the body in the same backward. Cross-tokenizer KD is a signal + a loss
(:mod:`curate.distill.xtok`).

Memory: the student's hidden states are detached at the output head; logits, the teacher's side and the
loss are built ``loss.chunk_tokens`` tokens at a time and each chunk is back-propagated at once, so only
one ``[chunk, V]`` block is alive (not ``batch x seq x V``); the gradient of the hidden states is then
pushed through the network body in one backward. The teacher's hidden states are kept (``[tokens, H]``,
small) and its head applied per chunk too. Models whose logits are not ``head(hidden)`` (soft-capping,
logit scaling) and teacher backends without hidden states use full logits. Closed-form gradients for the
common divergences: :mod:`curate.distill.fused`.

Checkpoints: :mod:`curate.distill.checkpoint`. The data order is a pure function of (seed, epoch), so a
resumed run continues with the same batches and reproduces an uninterrupted run. Progress bar,
``metrics.jsonl`` and the loss plot: :mod:`curate.distill.progress`; held-out loss:
:func:`curate.distill.evaluate.held_out_loss`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from curate.distill.checkpoint import load_checkpoint, save_checkpoint
from curate.distill.config import DistillConfig
from curate.distill.data import TokenData, collate
from curate.distill.evaluate import held_out_loss
from curate.distill.fused import HeadInto, Scratch, plain_head_weight
from curate.distill.objective import SpecLoss, TokenLoss
from curate.distill.progress import plot_losses, progress_bar, truncate_metrics
from curate.distill.signals import CachedTopK, MicroBatch, OnlineTeacher, OnPolicy, TeacherSignal
from curate.models.causal_lm import IGNORE, hidden_states, lm_parts
from curate.models.device import torch_device as resolve_device
from curate.models.perf import keep_freed_memory, peak_memory_mb, reset_peak_memory

__all__ = ["DistillTrainer", "autocast_dtype", "lr_lambda", "plot_losses", "resolve_device"]

log = logging.getLogger(__name__)


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


class StepHook(Protocol):
    """Runs after every optimizer step (``DistillTrainer(hooks=...)``); its state is saved in the checkpoint
    under ``name`` (tensors, numbers and dicts of them: ``state.pt`` is read with ``weights_only``)."""

    name: str

    def after_step(self, trainer: DistillTrainer) -> dict[str, Any] | None:
        """Called once the optimizer step is taken (``trainer.step`` counts it); what it returns is logged."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class _Schedule:
    """Picklable-free callable for LambdaLR (its state_dict then holds only numbers)."""

    def __init__(self, warmup: int, total: int, schedule: str, min_ratio: float) -> None:
        self.warmup, self.total, self.schedule, self.min_ratio = warmup, total, schedule, min_ratio

    def __call__(self, step: int) -> float:
        return lr_lambda(step, self.warmup, self.total, self.schedule, self.min_ratio)


class DistillTrainer:
    """Trains ``student`` towards a teacher signal on token data (see the module docstring for the seam).

    ``teacher``: an ``nn.Module`` causal LM or an object with ``logits(input_ids, attention_mask)``
    (a :class:`curate.models.teacher.TeacherBackend`); ``cache``: an object whose ``[i]`` gives the
    :class:`TopK` ``[len(seq_i), k]`` of training example ``i`` (position t = prediction of token t+1).
    From them and ``cfg.loss`` the default mode is built; ``loss=`` / ``signal=`` replace either half.
    ``vocab``: logits are sliced to this many ids (see :func:`curate.models.causal_lm.shared_vocab`).
    """

    def __init__(self, cfg: DistillConfig, student: torch.nn.Module, train_data: TokenData, *,
                 teacher: Any = None, cache: Any = None, eval_data: TokenData | None = None,
                 vocab: int | None = None, pad_id: int = 0, eos_id: int | None = None,
                 loss: TokenLoss | None = None, signal: TeacherSignal | None = None, aux: Any = None,
                 hooks: Sequence[StepHook] = ()) -> None:
        self.cfg = cfg
        # after each optimizer step, e.g. the EMA teacher's update (their state goes into checkpoints)
        self.hooks = list(hooks)
        self.device = resolve_device(cfg.device)
        if cfg.threads and self.device.type == "cpu":
            torch.set_num_threads(cfg.threads)
        if cfg.keep_freed_memory and self.device.type == "cpu":
            keep_freed_memory()  # no page faults on the step's big re-allocated tensors
        self.student = student.to(self.device)
        self.teacher = teacher
        if isinstance(teacher, torch.nn.Module):
            self.teacher = teacher.to(self.device).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        self.cache = cache
        self.train_data, self.eval_data = train_data, eval_data
        self.pad_id, self.eos_id = pad_id, eos_id
        s_rows = self.student.get_output_embeddings().weight.shape[0]
        self.vocab = vocab or s_rows
        self.s_parts = lm_parts(self.student)
        self.t_parts = lm_parts(self.teacher) if isinstance(self.teacher, torch.nn.Module) else None
        self.amp = autocast_dtype(cfg.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp == torch.float16 else None
        # reusable [rows, V] scratch for the loss on CPU (fresh big tensors cost page faults there), made at
        # once with the most rows a micro-batch chunk of this data can have (no re-allocation as batches grow)
        longest = max((len(s) for s in train_data.seqs), default=1)
        rows = min(cfg.loss.chunk_tokens, cfg.optim.batch_size * max(1, longest - 1))
        self.scratch = Scratch(self.device, min_rows=rows if self.device.type == "cpu" else 0)
        self._head_grad: torch.Tensor | None = None  # the reused [V, H] gradient of a plain CPU head
        self._sparse_emb = self._tied_embedding()
        self.loss: TokenLoss = loss if loss is not None else SpecLoss(cfg.loss, self.scratch.like)
        self.signal = signal if signal is not None else self._default_signal()
        if loss is None and (cfg.loss.token_weighting != "none" or cfg.loss.teacher_prior != "none"):
            from curate.distill.modes_uncert import uncertainty_mode  # uncertainty-aware KD (issue 13.3)

            self.loss, self.signal = uncertainty_mode(cfg.loss, self.signal, vocab=self.vocab, scratch=self.scratch.like)
        if self.loss.needs_teacher and self.signal is None:
            raise ValueError(f"loss '{getattr(self.loss, 'name', type(self.loss).__name__)}' needs a teacher "
                             "or a teacher cache")
        if cfg.on_policy_fraction > 0 and teacher is None:
            raise ValueError("on_policy_fraction > 0 needs an online teacher to score student samples")
        self.on_policy = OnPolicy(cfg.on_policy, cfg.on_policy_fraction, seed=cfg.seed + 1, pad_id=pad_id,
                                  eos_id=eos_id)
        bs = cfg.optim.batch_size
        self.batches_per_epoch = max(1, len(train_data) // bs)
        if cfg.optim.max_steps:
            self.total_steps = cfg.optim.max_steps
        else:
            self.total_steps = max(1, math.ceil(cfg.optim.epochs * self.batches_per_epoch / cfg.optim.grad_accum))
        #: the last step allowed (None: until the token budget is spent); total_steps plans the LR schedule
        self.step_cap: int | None = self.total_steps
        if cfg.optim.max_tokens:
            per_step = max(1.0, train_data.n_tokens() / max(1, len(train_data)) * bs * cfg.optim.grad_accum)
            planned = max(1, math.ceil(cfg.optim.max_tokens / per_step))
            self.step_cap = cfg.optim.max_steps
            self.total_steps = min(planned, cfg.optim.max_steps) if cfg.optim.max_steps else planned
        o = cfg.optim
        # aux: an extra loss term on the forward with its own trained parameters (hidden-state KD's projections)
        self.aux = aux.to(self.device) if aux is not None else None
        decay = [p for n, p in self.student.named_parameters() if p.requires_grad and p.dim() >= 2]
        if self.aux is not None:
            decay += [p for p in self.aux.parameters() if p.requires_grad]
        no_decay = [p for n, p in self.student.named_parameters() if p.requires_grad and p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=o.lr, betas=o.betas, fused=self.device.type in ("cuda", "cpu") or None)  # CPU fused: ~8x faster step
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _Schedule(o.warmup_steps, self.total_steps, o.schedule, o.min_lr_ratio))
        self.step = 0
        self.micro_pos = 0
        self.tokens_seen = 0
        self.train_time = 0.0
        self._perm_cache: tuple[int, list[int]] | None = None
        # a curriculum (data.order): the same example order every epoch instead of a reshuffle
        self.fixed_order: list[int] | None = None
        # KPOD progressive distillation (data.kpod.stages): step -> the examples' prompt lengths
        self.prompt_schedule: Callable[[int], list[int]] | None = None
        self.out = Path(cfg.output_dir)
        self.history: list[dict[str, Any]] = []

    def _default_signal(self) -> TeacherSignal | None:
        """The mode's teacher signal from ``teacher`` / ``cache``: the cache for training examples, the
        online teacher for the rest (on-policy samples, held-out data); None for label-only losses."""
        if not self.loss.needs_teacher:
            return None
        online = None
        if self.teacher is not None:
            online = OnlineTeacher(self.teacher, vocab=self.vocab, device=self.device, parts=self.t_parts,
                                   autocast=self._autocast, amp=self.amp, scratch=self.scratch)
        if self.cache is not None:
            return CachedTopK(self.cache, device=self.device, fallback=online)
        return online

    @property
    def policy_gen(self) -> torch.Generator:
        """The seeded generator of the on-policy draws (saved in checkpoints)."""
        return self.on_policy.generator

    # ------------------------------------------------------------------ data
    def _perm(self, epoch: int) -> list[int]:
        if self.fixed_order is not None:
            return self.fixed_order
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
        if d.task:
            b["task"] = torch.tensor([d.task[i] for i in idx], dtype=torch.long)
        return b

    def rollout(self, idx: list[int]) -> dict[str, Any]:
        """Student samples continuing the prompts of examples ``idx`` (GKD on-policy batch)."""
        return self.on_policy.rollout(self.student, self.train_data, idx, device=self.device, autocast=self._autocast)

    # ------------------------------------------------------------------ loss
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def _tied_embedding(self) -> torch.nn.Embedding | None:
        """The student's input embedding when it shares its weight with a plain CPU fp32 output head (and the
        trainer takes its gradients through :class:`HeadInto`), else None. Its lookup is then run with
        ``sparse=True`` in training: the embedding's gradient (the step's few hundred token rows) is added
        into the head's dense ``[V, H]`` gradient in place, instead of a fresh zero-filled ``[V, H]`` tensor
        (50 MB, page-faulted on CPU) plus an add per micro-batch."""
        if self.s_parts is None or self.device.type != "cpu" or self.amp is not None:
            return None
        emb = self.student.get_input_embeddings()
        head = self.s_parts[1]
        w = getattr(head, "weight", None)
        if (type(emb) is not torch.nn.Embedding or type(head) is not torch.nn.Linear or head.bias is not None
                or w is None or emb.weight is not w or w.dtype != torch.float32 or emb.sparse):
            return None
        return emb

    @contextlib.contextmanager
    def _sparse_lookup(self, on: bool) -> Any:
        """Run the tied embedding's lookup sparse for this forward (see :meth:`_tied_embedding`)."""
        emb = self._sparse_emb if on else None
        if emb is None:
            yield
            return
        emb.sparse = True
        try:
            yield
        finally:
            emb.sparse = False

    def _dense_grads(self) -> None:
        """A sparse embedding gradient that met no dense head gradient (a step with no head backward) is
        made dense for clipping and the fused optimizer."""
        w = self._sparse_emb.weight if self._sparse_emb is not None else None
        if w is not None and w.grad is not None and w.grad.is_sparse:
            w.grad = w.grad.to_dense()

    def _student_head(self, h: torch.Tensor) -> torch.Tensor:
        """Student logits ``[n, vocab]`` (float) of hidden rows ``h`` (with grad when ``h`` has it)."""
        head = self.s_parts[1]
        w = plain_head_weight(head, h, self.amp)
        if w is not None:
            out = self.scratch.get("s", h.shape[0], w.shape[0], torch.float32)
            gbuf = None
            if torch.is_grad_enabled() and w.requires_grad and w.is_leaf:  # its gradient into a reused buffer
                if self._head_grad is None or self._head_grad.shape != w.shape:
                    self._head_grad = torch.empty_like(w, memory_format=torch.contiguous_format)
                gbuf = self._head_grad
            return HeadInto.apply(h, w, out, gbuf)[:, : self.vocab]
        with self._autocast():
            s_lo = head(h)
        return s_lo[:, : self.vocab].float()

    def batch_loss(self, b: dict[str, Any], n_total: int, *, backward: bool) -> dict[str, float]:
        """Summed per-token loss and components of one collated micro-batch, plus its ``tokens``; with
        ``backward`` each chunk's ``loss / n_total`` is back-propagated. ``{}`` when the batch has no valid
        token, or the signal has nothing for it."""
        mb = MicroBatch.of(b, self.device)
        n = mb.n
        if n == 0:
            return {}
        with torch.set_grad_enabled(backward):
            with self._autocast(), self._sparse_lookup(backward):
                if self.s_parts is not None:
                    rows = hidden_states(self.s_parts[0], mb.input_ids, mb.attention_mask)[:, :-1][mb.mask]
                else:
                    rows = self.student(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits[:, :-1][mb.mask]
            targets = self.signal.targets(mb) if self.signal is not None else None
            if self.signal is not None and targets is None:
                if backward:
                    raise ValueError("the teacher signal has nothing for a training batch")
                return {}
            rows_d = rows.detach().requires_grad_(backward)
            tok_w = b["tok_w"].to(self.device)[:, 1:][mb.mask] if "tok_w" in b else None  # rationale mode
            sums: dict[str, Any] = {"loss": 0.0}
            chunk = self.cfg.loss.chunk_tokens
            for a in range(0, n, chunk):
                e = min(n, a + chunk)
                s_lo = self._student_head(rows_d[a:e]) if self.s_parts is not None else rows_d[a:e][:, : self.vocab].float()
                per, comp = self.loss(s_lo, targets.chunk(a, e) if targets is not None else None, mb.labels[a:e])
                if backward:
                    loss = (per * tok_w[a:e]).sum() if tok_w is not None else per.sum() / n_total
                    (self.scaler.scale(loss) if self.scaler else loss).backward()
                sums["loss"] = sums["loss"] + per.detach().sum()
                for k, v in comp.items():
                    sums[k] = sums.get(k, 0.0) + v
            aux = self.aux(mb) if self.aux is not None else None  # (summed term, components), e.g. hidden states
            if aux is not None:
                sums["loss"] = sums["loss"] + aux[0].detach()
                for k, v in aux[1].items():
                    sums[k] = sums.get(k, 0.0) + v
            if backward and aux is not None and aux[0].requires_grad:  # one backward through the body for both
                a_loss = aux[0] / n_total
                torch.autograd.backward([rows, self.scaler.scale(a_loss) if self.scaler else a_loss],
                                        [rows_d.grad if rows_d.grad is not None else torch.zeros_like(rows), None])
            elif backward and rows_d.grad is not None:
                rows.backward(rows_d.grad)
        out = {k: float(v) for k, v in sums.items()}  # one device sync per micro-batch
        out["tokens"] = float(mb.attention_mask.sum())
        return out

    def _micro(self, b: dict[str, Any], n_total: int) -> dict[str, float]:
        return self.batch_loss(b, n_total, backward=True)

    # ------------------------------------------------------------------ loop
    def train_step(self) -> dict[str, Any]:
        """One optimizer step over ``grad_accum`` micro-batches; returns the logged record."""
        ga = self.cfg.optim.grad_accum
        if self.prompt_schedule is not None:  # the loss covers a growing suffix of each rationale
            self.train_data.n_prompt = self.prompt_schedule(self.step)
        on_policy = self.on_policy.draw()
        micro = []
        for idx in self._within_budget([self.batch_indices(self.micro_pos + j) for j in range(ga)]):
            micro.append(self.rollout(idx) if on_policy else self._batch(idx))
        self.micro_pos += ga
        n_total = sum(int((m["labels"][:, 1:] != IGNORE).sum()) for m in micro)
        if self.train_data.task and not on_policy:
            _task_weights(micro, self.cfg.loss.rationale_weight)
        self.student.train()
        sums: dict[str, float] = {}
        for m in micro:
            for k, v in self._micro(m, max(1, n_total)).items():
                sums[k] = sums.get(k, 0.0) + v
        self._dense_grads()
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
        logged: dict[str, Any] = {}
        for h in self.hooks:
            logged.update(h.after_step(self) or {})
        tok = int(sums.pop("tokens", 0))
        self.tokens_seen += tok
        nt = max(1, n_total)
        rec: dict[str, Any] = {"step": self.step, "loss": sums.get("loss", 0.0) / nt, "lr": lr,
                               "tokens": tok, "valid_tokens": n_total, "on_policy": on_policy}
        for k in ("ce", "kd", "hidden"):
            if k in sums:
                rec[k] = sums[k] / nt
        if gnorm is not None:
            rec["grad_norm"] = gnorm
        rec.update(logged)
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
        truncate_metrics(metrics_path, self.step if resume else 0)
        stop = self.step_cap
        if max_steps is not None:
            stop = self.step + max_steps if stop is None else min(stop, self.step + max_steps)
        shown = stop if stop is not None else self.total_steps
        reset_peak_memory(str(self.device))
        with progress_bar(cfg.progress, shown, self.step) as bar, open(metrics_path, "a", encoding="utf-8") as mf:
            task = bar.add_task("distill", total=shown, completed=self.step, loss=float("nan"), tps=0.0) if bar else None
            while (stop is None or self.step < stop) and not self.budget_spent():
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
                if self.step % cfg.log_every == 0 or self.step == stop or self.budget_spent():
                    mf.write(json.dumps(rec) + "\n")
                    mf.flush()
                if bar:
                    bar.update(task, completed=self.step, loss=rec["loss"],
                               tps=self.tokens_seen / max(self.train_time, 1e-9))
                if on_step:
                    on_step(rec)
                if cfg.save_every and self.step % cfg.save_every == 0 and (stop is None or self.step < stop):
                    self.save_checkpoint(ck)
        self.save_checkpoint(ck)
        self.scratch.clear()  # the loss scratch is not needed after training
        self._head_grad = None
        summary = {"steps": self.step, "total_steps": self.total_steps,
                   "final_loss": self.history[-1]["loss"] if self.history else None,
                   "train_tokens": self.tokens_seen, "train_s": self.train_time,
                   "train_tokens_per_s": self.tokens_seen / self.train_time if self.train_time else None,
                   "peak_memory_mb": peak_memory_mb(str(self.device)), "device": str(self.device)}
        if cfg.plot:
            plot_losses(metrics_path, self.out / "loss.png")
        return summary

    def _within_budget(self, groups: list[list[int]]) -> list[list[int]]:
        """The step's micro-batches cut after the sequence that spends ``optim.max_tokens`` (so a run goes over
        its budget by less than one sequence, not one batch); unchanged without a budget."""
        budget = self.cfg.optim.max_tokens
        if budget is None:
            return groups
        left = budget - self.tokens_seen
        out: list[list[int]] = []
        for idx in groups:
            keep = []
            for i in idx:
                if left <= 0:
                    break
                keep.append(i)
                left -= len(self.train_data.seqs[i])
            if keep:
                out.append(keep)
        return out

    def budget_spent(self) -> bool:
        """True once ``optim.max_tokens`` training tokens were processed (never without a budget)."""
        budget = self.cfg.optim.max_tokens
        return budget is not None and self.tokens_seen >= budget

    def eval_loss(self) -> dict[str, float]:
        """Held-out mean per-token training loss (same objective) and student CE."""
        return held_out_loss(self)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, path: str | Path) -> None:
        save_checkpoint(path, model=self.student, optimizer=self.optimizer, scheduler=self.scheduler,
                        scaler=self.scaler, state={
                            "step": self.step, "micro_pos": self.micro_pos, "tokens_seen": self.tokens_seen,
                            "train_time": self.train_time, "total_steps": self.total_steps,
                            "policy_gen": self.policy_gen.get_state(), "history": json.dumps(self.history),
                            **({"aux": self.aux.state_dict()} if self.aux is not None else {}),
                            **({"hooks": {h.name: h.state_dict() for h in self.hooks}} if self.hooks else {})})

    def load_checkpoint(self, path: str | Path) -> None:
        state = load_checkpoint(path, model=self.student, optimizer=self.optimizer, scheduler=self.scheduler,
                                scaler=self.scaler, device=self.device)
        if state["total_steps"] != self.total_steps:
            log.warning("checkpoint was made for %d total steps, config gives %d (lr schedule changes)",
                        state["total_steps"], self.total_steps)
        self.step, self.micro_pos = int(state["step"]), int(state["micro_pos"])
        self.tokens_seen, self.train_time = int(state["tokens_seen"]), float(state["train_time"])
        self.policy_gen.set_state(state["policy_gen"])
        self.history = json.loads(state.get("history", "[]"))
        if self.aux is not None and "aux" in state:
            self.aux.load_state_dict(state["aux"])
        for h in self.hooks:
            if h.name not in state.get("hooks", {}):
                raise ValueError(f"checkpoint {path} has no state for '{h.name}' (made without it)")
            h.load_state_dict(state["hooks"][h.name])


def _task_weights(micro: list[dict[str, Any]], weight: float) -> None:
    """Distilling step by step (Hsieh et al. 2023): ``weight * mean_label + (1 - weight) * mean_rationale`` over
    the accumulated batch, as per-token weights ``b["tok_w"]`` (weight / label tokens, (1 - weight) / rationale
    tokens). Logged losses stay token means; only the gradient is reweighted."""
    from curate.distill.data import TASK_LABEL

    counts = [0, 0]
    for m in micro:
        valid = m["labels"][:, 1:] != IGNORE  # the shifted positions the loss covers
        is_label = (m["task"] == TASK_LABEL)[:, None]
        counts[0] += int((valid & is_label).sum())
        counts[1] += int((valid & ~is_label).sum())
    w_label = weight / max(counts[0], 1)
    w_rat = (1.0 - weight) / max(counts[1], 1)
    for m in micro:
        is_label = (m["task"] == TASK_LABEL)[:, None].expand_as(m["labels"])
        m["tok_w"] = torch.where(is_label, torch.tensor(w_label), torch.tensor(w_rat)).float()
