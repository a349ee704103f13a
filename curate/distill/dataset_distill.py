"""Dataset distillation for text (survey §4.1, §5.1): a small training set that trains a student nearly as
well as the full data, learned in the student's input-embedding space or picked and relabelled, compared
with a random subset and a k-center coreset of the same size on held-out KL to the teacher and perplexity.

Reached through ``distill.yaml``'s ``dataset_distill:`` section (:class:`~curate.distill.config.DatasetDistillSpec`;
``curate distill config.yaml`` or ``distill(cfg)``): every method in ``methods`` yields a set of ``size``
sequences, one student per set is trained from the same initialisation for the same ``optim`` steps, and
``report.md`` / ``report.json`` hold the comparison table.

**Synthetic sequences are soft tokens.** A synthetic example is a matrix of logits ``z [L, V]``; the model
reads ``inputs_embeds = softmax(z) @ E`` where ``E [V, H]`` is *that model's* input embedding, so the same
set feeds any student sharing the vocabulary, its embedding matrix is trained by it, and the teacher can
read it too (``softmax(z) @ E_teacher``). Its label at position t is a next-token distribution: the
teacher's on the current synthetic inputs (``labels: teacher``, recomputed whenever they move: SRe2L's
relabelling applied to learned data) or free label logits learned by gradient matching (``labels:
learned``, the learned soft labels of Sucholutsky & Schonlau 2021). The soft-label loss is the KD loss
``T^2 * KL(p_T^T || p_S^T)`` (:func:`curate.distill.losses.forward_kl`'s KL). Memory is ``size x L x V``
floats for the set (plus as much for the labels): fine for character or small vocabularies; a 50k
vocabulary at 16 x 128 is 400 MB. A synthetic sequence has a label at every position (it has no prompt);
real subsets keep their data's prompt/response split (loss on the response only).

**Gradient matching** (DC; Zhao, Mopuri & Bilen, ICLR 2021, Algorithm 1; VICO-UoE/DatasetCondensation
``main.py``/``utils.py``). For ``iterations`` fresh initialisations theta_0 of the student; ``outer_loop``
times: ``g_real = grad_theta l(theta; real batch)``, ``g_syn = grad_theta l(theta; S)``, one optimiser step
on S down ``D(g_syn, g_real)``, then ``inner_loop`` SGD steps (``lr_net``, momentum 0.5) of theta
on S. The distance is the paper's layer-wise one (``distance_wb``, ``dis_metric='ours'``)::

    D = sum over parameter tensors of dim >= 2, sum over output rows i of (1 - <a_i, b_i> / (|a_i| |b_i| + 1e-6))

(conv/3-D weights flattened to ``[out, rest]``; 1-D tensors, biases and norms, contribute 0). Rows are output
units: ``nn.Linear``/``nn.Embedding`` store them as rows; GPT-2's ``Conv1D`` stores ``[in, out]`` and is
transposed first. ``l`` on the real batch is the student's KD loss to the teacher on real tokens (the loss
the student will be trained with), on S the soft-label loss above. Adapted for text: no classes, so one
match per step over the whole set instead of one per class; the inputs are soft-token logits, not pixels,
whose gradients are orders of magnitude smaller and vary with the setup, so they move with Adam (lr 0.1)
instead of DC's SGD (lr_img 0.1, momentum 0.5; SGD at lr 1 left the char-level set where it was); the student is in eval mode while matching (dropout would make
the two gradients disagree at random; DC's ConvNet has none); labels are held fixed within a step. DC's
defaults (images): Iteration 1000, lr_img 0.1, lr_net 0.01, batch_real 256, ``get_loops``: (outer, inner) =
(10, 50) at 10 images per class, (50, 10) at 50.

**Distribution matching** (DM; Zhao & Bilen, WACV 2023; ``main_DM.py``, ``main_DM_text.py``). For
``iterations`` fresh, untrained students psi (parameters frozen), with ``psi(x)`` the mean over positions of
the last hidden state (after the final norm)::

    L = || mean_{x in real batch} psi(x) - mean_{s in S} psi(s) ||^2

(the linear-kernel MMD), one Adam step on S per network (DM: SGD, momentum 0.5; Adam for the reason above).
DM's defaults: Iteration 20000 (text 10000), lr_img 1.0, batch_real 256, init real; text DM uses no
augmentation (``dsa_strategy none``), nor here.

**SRe2L relabelling** (Yin, Xing & Shen, NeurIPS 2023, "Squeeze, Recover and Relabel"): *squeeze* = the
trained teacher, *recover* = here a k-center coreset of real sequences (recovery by optimisation is what
gm/dm do), *relabel* = the teacher's soft distribution on each, i.e. cached top-k KD on the coreset
(:func:`curate.distill.cache.build_teacher_cache`, pure KD, ``alpha 0``). Their validation trains with
``KLDiv(log_softmax(s/T), softmax(t/T))``, AdamW lr 1e-3, weight decay 0.01, cosine, T=3 (``train_KD.py``;
their ImageNet script passes 20); here ``temperature`` (default 1) and ``optim``.

**Baselines.** ``random``: a seeded random subset; ``kcenter``: the greedy k-center coreset
(:func:`curate.models.kcenter.kcenter_greedy`, Sener & Savarese 2018) of the teacher's mean-pooled last
hidden states; both trained on their hard labels (CE), as coreset baselines in the dataset-distillation
papers are. ``random_kd``: the random subset relabelled like SRe2L (separates the coreset from the relabel).
The k-center features come from the teacher, the embedding it distils, computed once for the ``pool``.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from curate.distill.config import DatasetDistillSpec, DistillConfig, LossSpec
from curate.distill.config import TeacherSignal as TeacherSignalSpec
from curate.distill.data import TokenData, collate
from curate.models.causal_lm import IGNORE, lm_parts
from curate.models.device import torch_device
from curate.models.kcenter import kcenter_greedy

if TYPE_CHECKING:
    from curate.distill.prepare import DistillResult, Prepared

log = logging.getLogger(__name__)

__all__ = [
    "DistributionMatching",
    "GradientMatching",
    "SyntheticSet",
    "gradient_match_distance",
    "kcenter_indices",
    "mmd_linear",
    "run_dataset_distill",
    "train_on_synthetic",
]


# ----------------------------------------------------------------------------------------------- the two objectives
def gradient_match_distance(g_syn: Sequence[torch.Tensor | None], g_real: Sequence[torch.Tensor | None], *,
                            transpose: Sequence[bool] | None = None, eps: float = 1e-6) -> torch.Tensor:
    """DC's layer-wise gradient distance (module docstring): per tensor of dim >= 2, the sum over output rows of
    ``1 - cos``; 1-D tensors and pairs with a missing gradient count 0. ``transpose[i]``: tensor i stores
    ``[in, out]`` (GPT-2 ``Conv1D``) and is transposed to ``[out, in]`` first."""
    total: torch.Tensor | None = None
    for i, (gs, gr) in enumerate(zip(g_syn, g_real, strict=True)):
        if gs is None or gr is None or gs.dim() < 2:
            continue
        if transpose is not None and transpose[i]:
            gs, gr = gs.t(), gr.t()
        a, b = gs.reshape(gs.shape[0], -1), gr.reshape(gr.shape[0], -1)
        d = (1.0 - (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + eps)).sum()
        total = d if total is None else total + d
    if total is None:
        ref = next((g for g in g_syn if g is not None), None)
        return torch.zeros((), device=ref.device if ref is not None else None)
    return total


def mmd_linear(emb_real: torch.Tensor, emb_syn: torch.Tensor) -> torch.Tensor:
    """DM's objective: ``|| mean_i emb_real[i] - mean_j emb_syn[j] ||^2`` (squared MMD with a linear kernel)."""
    return ((emb_real.mean(0) - emb_syn.mean(0)) ** 2).sum()


# ----------------------------------------------------------------------------------------------- model helpers
def _in_embed(model: Any, vocab: int) -> torch.Tensor:
    return model.get_input_embeddings().weight[:vocab]


def _logits(model: Any, x: torch.Tensor, att: torch.Tensor | None, vocab: int) -> torch.Tensor:
    """Next-token logits ``[B, T-1, V]`` of inputs_embeds ``x [B, T, H]``."""
    return model(inputs_embeds=x, attention_mask=att, use_cache=False).logits[:, :-1, :vocab].float()


def _pooled(model: Any, x: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
    """psi(x): mean over attended positions of the last hidden state ``[B, H]``."""
    parts = lm_parts(model)
    if parts is not None:
        h = parts[0](inputs_embeds=x, attention_mask=att, use_cache=False).last_hidden_state
    else:
        h = model(inputs_embeds=x, attention_mask=att, use_cache=False, output_hidden_states=True).hidden_states[-1]
    w = att.to(h.dtype).unsqueeze(-1)
    return (h * w).sum(1) / w.sum(1).clamp_min(1.0)


def _kd(s_logits: torch.Tensor, t_logits: torch.Tensor, mask: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """Mean over valid positions of ``T^2 * KL(p_T^T || p_S^T)`` (the value of
    :func:`curate.distill.losses.forward_kl`, which detaches its teacher; here learned labels need the gradient)."""
    if mask is not None:
        s_logits, t_logits = s_logits[mask], t_logits[mask]
    ls = torch.log_softmax(s_logits / temperature, -1)
    lt = torch.log_softmax(t_logits / temperature, -1)
    return temperature ** 2 * (lt.exp() * (lt - ls)).sum(-1).mean()


def _transposed(model: Any, params: list[torch.nn.Parameter]) -> list[bool]:
    """Which parameters are GPT-2 ``Conv1D`` weights (stored ``[in, out]``)."""
    conv = {id(m.weight) for m in model.modules() if type(m).__name__ == "Conv1D"}
    return [id(p) in conv for p in params]


def fresh_student(template: Any, seed: int, device: torch.device) -> Any:
    """A newly initialised model of ``template``'s architecture (DC/DM sample theta_0 ~ P_theta per iteration)."""
    torch.manual_seed(seed)
    cfg = copy.deepcopy(template.config)
    cfg._attn_implementation = "eager"  # double backward through attention (gm) on every backend
    return type(template)(cfg).to(device)


# ----------------------------------------------------------------------------------------------- the synthetic set
@dataclass
class SyntheticSet:
    """``logits [m, L, V]``: the soft tokens; ``labels [m, L-1, V]``: label logits (teacher or learned)."""

    logits: torch.Tensor
    labels: torch.Tensor | None = None

    def inputs(self, model: Any) -> torch.Tensor:
        """inputs_embeds ``[m, L, H]`` of ``model``: ``softmax(logits) @ E_model``."""
        v = self.logits.shape[-1]
        return torch.softmax(self.logits, -1) @ _in_embed(model, v)

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        t = {"logits": self.logits.detach().cpu().contiguous()}
        if self.labels is not None:
            t["labels"] = self.labels.detach().cpu().contiguous()
        save_file(t, str(path), metadata={"format": "curate-soft-token-set/1"})

    @classmethod
    def load(cls, path: str | Path) -> SyntheticSet:
        from safetensors.torch import load_file

        t = load_file(str(path))
        return cls(t["logits"], t.get("labels"))

    def argmax_tokens(self) -> list[list[int]]:
        """The hard token each soft token is closest to (for a look at the set)."""
        return self.logits.argmax(-1).tolist()


def init_synthetic(data: TokenData, pool: Sequence[int], *, size: int, seq_len: int, vocab: int, init: str,
                   init_prob: float, gen: torch.Generator) -> torch.Tensor:
    """Soft-token logits ``[size, seq_len, V]``: random real sequences of at least ``seq_len`` tokens as soft
    one-hots (``init_prob`` on the real token), or standard normal logits (``noise``)."""
    if init == "noise":
        return torch.randn(size, seq_len, vocab, generator=gen)
    long = [i for i in pool if len(data.seqs[i]) >= seq_len] or list(pool)
    pick = [long[int(j)] for j in torch.randint(len(long), (size,), generator=gen)]
    lo, hi = math.log((1.0 - init_prob) / max(1, vocab - 1)), math.log(init_prob)
    z = torch.full((size, seq_len, vocab), lo)
    for r, i in enumerate(pick):
        s = torch.as_tensor(data.seqs[i][:seq_len], dtype=torch.long)
        z[r, torch.arange(len(s)), s] = hi
    return z


class _RealBatches:
    """Seeded real batches from the pool, with the teacher's logits (computed once per batch, no grad)."""

    def __init__(self, data: TokenData, pool: Sequence[int], *, teacher: Any, vocab: int, pad_id: int,
                 device: torch.device, seed: int) -> None:
        self.data, self.pool, self.teacher, self.vocab, self.pad_id, self.device = data, list(pool), teacher, vocab, pad_id, device
        self.gen = torch.Generator().manual_seed(seed)

    def draw(self, n: int) -> dict[str, torch.Tensor]:
        idx = [self.pool[int(j)] for j in torch.randperm(len(self.pool), generator=self.gen)[:n]]
        b = collate([self.data.seqs[i] for i in idx], [self.data.n_prompt[i] for i in idx], self.pad_id)
        ids, att = b["input_ids"].to(self.device), b["attention_mask"].to(self.device)
        out = {"input_ids": ids, "attention_mask": att, "mask": (b["labels"][:, 1:] != IGNORE).to(self.device)}
        if self.teacher is not None:
            with torch.no_grad():
                out["teacher"] = self.teacher(input_ids=ids, attention_mask=att).logits[:, :-1, : self.vocab].float()
        return out


class _Distiller:
    """What gradient and distribution matching share: the set, the real batches, the teacher labels."""

    def __init__(self, *, student: Any, teacher: Any, data: TokenData, pool: Sequence[int], spec: DatasetDistillSpec,
                 vocab: int, pad_id: int, device: torch.device, seed: int, seq_len: int) -> None:
        self.template, self.teacher, self.spec, self.vocab, self.device, self.seed = student, teacher, spec, vocab, device, seed
        gen = torch.Generator().manual_seed(seed)
        z = init_synthetic(data, pool, size=spec.size, seq_len=seq_len, vocab=vocab, init=spec.init,
                           init_prob=spec.init_prob, gen=gen)
        self.z = z.to(device).requires_grad_(True)
        self.y: torch.Tensor | None = None
        if spec.labels == "learned":
            self.y = self.teacher_labels().clone().requires_grad_(True)
        self.real = _RealBatches(data, pool, teacher=teacher, vocab=vocab, pad_id=pad_id, device=device, seed=seed + 1)
        self.history: list[float] = []
        self.seconds = 0.0

    @torch.no_grad()
    def teacher_labels(self) -> torch.Tensor:
        """The teacher's next-token logits ``[m, L-1, V]`` on the current soft tokens."""
        x = torch.softmax(self.z.detach(), -1) @ _in_embed(self.teacher, self.vocab)
        return _logits(self.teacher, x, None, self.vocab)

    def labels(self) -> torch.Tensor:
        return self.y if self.y is not None else self.teacher_labels()

    def synthetic_loss(self, net: Any, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = torch.softmax(z, -1) @ _in_embed(net, self.vocab)
        return _kd(_logits(net, x, None, self.vocab), y, None, self.spec.temperature)

    def result(self) -> SyntheticSet:
        """The learned set, labelled: learned labels, or the teacher relabelling the final soft tokens."""
        return SyntheticSet(self.z.detach().clone(), (self.y if self.y is not None else self.teacher_labels()).detach().clone())


class GradientMatching(_Distiller):
    """DC gradient matching on soft tokens (module docstring); ``run()`` does ``spec.gm.iterations``."""

    def _grads(self, net: Any, params: list[torch.nn.Parameter], batch: dict[str, torch.Tensor], *,
               create_graph: bool) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
        x = _in_embed(net, self.vocab)[batch["input_ids"]]
        lr_ = _kd(_logits(net, x, batch["attention_mask"], self.vocab), batch["teacher"], batch["mask"],
                  self.spec.temperature)
        g_real = [g.detach() if g is not None else None
                  for g in torch.autograd.grad(lr_, params, allow_unused=True)]
        ls = self.synthetic_loss(net, self.z, self.labels())
        g_syn = list(torch.autograd.grad(ls, params, create_graph=create_graph, allow_unused=True))
        return g_syn, g_real

    def distance(self, net: Any, batch: dict[str, torch.Tensor], *, create_graph: bool = False) -> torch.Tensor:
        """D(g_syn, g_real) of one network on one real batch."""
        net.eval()
        params = [p for p in net.parameters() if p.requires_grad]
        g_syn, g_real = self._grads(net, params, batch, create_graph=create_graph)
        return gradient_match_distance(g_syn, g_real, transpose=_transposed(net, params))

    def run(self, iterations: int | None = None) -> list[float]:
        g = self.spec.gm
        opt = torch.optim.Adam([self.z] + ([self.y] if self.y is not None else []), lr=g.lr)
        t0 = time.perf_counter()
        for it in range(iterations if iterations is not None else g.iterations):
            net = fresh_student(self.template, self.seed * 7919 + it, self.device)
            net.eval()
            opt_net = torch.optim.SGD(net.parameters(), lr=g.lr_net, momentum=0.5)
            tot = 0.0
            for ol in range(g.outer_loop):
                d = self.distance(net, self.real.draw(g.batch_real), create_graph=True)
                opt.zero_grad()
                d.backward()
                opt.step()
                tot += float(d.detach())
                if ol == g.outer_loop - 1:
                    break
                z, y = self.z.detach(), self.labels().detach()
                for _ in range(g.inner_loop):
                    opt_net.zero_grad()
                    self.synthetic_loss(net, z, y).backward()
                    opt_net.step()
            self.history.append(tot / g.outer_loop)
        self.seconds += time.perf_counter() - t0
        return self.history


class DistributionMatching(_Distiller):
    """DM on soft tokens (module docstring); ``run()`` does ``spec.dm.iterations``."""

    def loss(self, net: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The MMD between the real batch's and the set's mean embeddings under ``net``."""
        with torch.no_grad():
            e_real = _pooled(net, _in_embed(net, self.vocab)[batch["input_ids"]], batch["attention_mask"])
        x = torch.softmax(self.z, -1) @ _in_embed(net, self.vocab)
        e_syn = _pooled(net, x, torch.ones(x.shape[:2], dtype=torch.long, device=x.device))
        return mmd_linear(e_real, e_syn)

    def run(self, iterations: int | None = None) -> list[float]:
        d = self.spec.dm
        opt = torch.optim.Adam([self.z], lr=d.lr)
        t0 = time.perf_counter()
        for it in range(iterations if iterations is not None else d.iterations):
            net = fresh_student(self.template, self.seed * 7919 + it, self.device)
            net.eval()
            for p in net.parameters():
                p.requires_grad_(False)
            loss = self.loss(net, self.real.draw(d.batch_real))
            opt.zero_grad()
            loss.backward()
            opt.step()
            self.history.append(float(loss.detach()))
        self.seconds += time.perf_counter() - t0
        return self.history


# ----------------------------------------------------------------------------------------------- training on a set
def _lr_at(step: int, cfg: DistillConfig, total: int) -> float:
    from curate.distill.trainer import lr_lambda

    o = cfg.optim
    return lr_lambda(step, o.warmup_steps, total, o.schedule, o.min_lr_ratio)


def train_on_synthetic(student: Any, syn: SyntheticSet, cfg: DistillConfig, *, temperature: float, vocab: int,
                       device: torch.device) -> dict[str, Any]:
    """Train ``student`` on the soft-token set with its labels (``T^2 * KL``), with ``cfg.optim``'s optimizer
    settings and step budget (AdamW, warmup + schedule, clipping) -- the same as the trainer gives the other
    methods. Returns a summary with the per-step loss."""
    o = cfg.optim
    student = student.to(device)
    student.train()
    m = syn.logits.shape[0]
    bs = min(o.batch_size, m)
    per_epoch = max(1, m // bs)
    total = o.max_steps or max(1, math.ceil(o.epochs * per_epoch / o.grad_accum))
    decay = [p for p in student.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in student.parameters() if p.requires_grad and p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=o.lr, betas=o.betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_at(s, cfg, total))
    z, y = syn.logits.to(device), syn.labels.to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    perm: list[int] = []
    losses = []
    t0 = time.perf_counter()
    for _ in range(total):
        opt.zero_grad(set_to_none=True)
        step_loss = 0.0
        for _ in range(o.grad_accum):
            if len(perm) < bs:
                perm += torch.randperm(m, generator=gen).tolist()
            idx, perm = perm[:bs], perm[bs:]
            x = torch.softmax(z[idx], -1) @ _in_embed(student, vocab)
            loss = _kd(_logits(student, x, None, vocab), y[idx], None, temperature) / o.grad_accum
            loss.backward()
            step_loss += float(loss.detach())
        if o.clip:
            torch.nn.utils.clip_grad_norm_(student.parameters(), o.clip)
        opt.step()
        sched.step()
        losses.append(step_loss)
    secs = time.perf_counter() - t0
    return {"steps": total, "final_loss": losses[-1] if losses else None, "first_loss": losses[0] if losses else None,
            "train_s": secs, "train_tokens": total * o.grad_accum * bs * z.shape[1], "losses": losses}


# ----------------------------------------------------------------------------------------------- subsets
@torch.no_grad()
def teacher_features(teacher: Any, data: TokenData, pool: Sequence[int], *, pad_id: int, device: torch.device,
                     batch_size: int = 32) -> np.ndarray:
    """The teacher's mean-pooled last hidden state of each pool sequence ``[len(pool), H]`` (k-center features)."""
    out = []
    for a in range(0, len(pool), batch_size):
        idx = pool[a:a + batch_size]
        b = collate([data.seqs[i] for i in idx], [0] * len(idx), pad_id)
        ids, att = b["input_ids"].to(device), b["attention_mask"].to(device)
        out.append(_pooled(teacher, teacher.get_input_embeddings()(ids), att).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def kcenter_indices(features: np.ndarray, k: int, seed: int) -> list[int]:
    """Rows of a greedy k-center coreset of ``features`` (first centre: a seeded random row)."""
    first = int(np.random.default_rng(seed).integers(len(features)))
    chosen, _, _ = kcenter_greedy(features, k=k, first=first)
    return chosen.tolist()


def _train_subset(cfg: DistillConfig, p: Prepared, student: Any, subset: TokenData, *, method: str,
                  relabel: bool, out: Path) -> dict[str, Any]:
    """Train on real sequences: hard labels (CE) or the teacher's cached top-k soft labels (SRe2L relabel)."""
    from curate.distill.trainer import DistillTrainer

    spec = cfg.dataset_distill
    assert spec is not None
    arm = out / method
    optim = cfg.optim.model_copy(update={"batch_size": min(cfg.optim.batch_size, len(subset))})
    update: dict[str, Any] = {"output_dir": str(arm), "optim": optim, "dataset_distill": None, "on_policy_fraction": 0.0,
                              "eval": cfg.eval.model_copy(update={"every_steps": 0}),
                              "data": cfg.data.model_copy(update={"order": "random"})}
    cache = None
    if relabel:
        from curate.distill.cache import build_teacher_cache
        from curate.distill.prepare import teacher_backend

        k = min(cfg.teacher_signal.k, p.vocab)
        update["loss"] = LossSpec(name="forward_kl", alpha=0.0, temperature=spec.temperature,
                                  chunk_tokens=cfg.loss.chunk_tokens)
        # one cache per subset: a rerun with other settings picks other sequences and must not hit a cache
        # of different data (build_teacher_cache refuses that)
        fp = subset.fingerprint()
        cdir = arm / f"cache-{fp[:16]}"
        update["teacher_signal"] = TeacherSignalSpec(mode="cache", dir=str(cdir), k=k)
        seqs = subset.seqs
        bs = 16
        tc = time.perf_counter()
        cache = build_teacher_cache(teacher_backend(cfg, p), (seqs[i:i + bs] for i in range(0, len(seqs), bs)),
                                    cdir, k, max_len=cfg.data.max_len, dataset_fingerprint=fp,
                                    pad_id=p.pad_id)
        cache_s = time.perf_counter() - tc
    else:
        cache_s = 0.0
        update["loss"] = LossSpec(name="ce", chunk_tokens=cfg.loss.chunk_tokens)
    acfg = cfg.model_copy(update=update)
    tr = DistillTrainer(acfg, student, subset, cache=cache, vocab=p.vocab, pad_id=p.pad_id, eos_id=p.eos_id)
    summary = tr.train()
    summary["losses"] = [h["loss"] for h in tr.history]
    summary["first_loss"] = summary["losses"][0] if summary["losses"] else None
    summary["cache_s"] = cache_s
    return summary


# ----------------------------------------------------------------------------------------------- the run
def _seq_len(spec: DatasetDistillSpec, data: TokenData, pool: Sequence[int]) -> int:
    if spec.seq_len:
        return spec.seq_len
    return max(2, int(statistics.median(len(data.seqs[i]) for i in pool)))


def run_dataset_distill(cfg: DistillConfig, p: Prepared) -> DistillResult:
    """Every method of ``cfg.dataset_distill`` on the prepared teacher/student/data (see module docstring):
    builds each set, trains one student per set from ``p.student``'s initialisation, evaluates each on the
    held-out data, writes ``report.md`` / ``report.json`` (the comparison table) and ``synthetic/<method>.safetensors``."""
    from curate.distill.evaluate import evaluate_models
    from curate.distill.prepare import DistillResult
    from curate.distill.trainer import autocast_dtype

    spec = cfg.dataset_distill
    assert spec is not None
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = torch_device(cfg.device)
    teacher = p.teacher.to(device).eval()
    for q in teacher.parameters():
        q.requires_grad_(False)
    n = len(p.train)
    if spec.size > n:
        raise ValueError(f"dataset_distill.size {spec.size} exceeds the {n} training sequences")
    gen = torch.Generator().manual_seed(cfg.seed + 17)
    pool = sorted(torch.randperm(n, generator=gen)[: spec.pool].tolist()) if spec.pool and spec.pool < n else list(range(n))
    init_state = copy.deepcopy(p.student.state_dict())
    seq_len = _seq_len(spec, p.train, pool)
    if "gm" in spec.methods or "dm" in spec.methods:
        cells = spec.size * seq_len * p.vocab
        if cells > (1 << 27):
            raise ValueError(f"soft-token set of {spec.size} x {seq_len} x {p.vocab} = {cells:,} logits is too large; "
                             "lower dataset_distill.size / seq_len (soft tokens cost size x seq_len x vocab)")
    features = None
    feature_s = 0.0
    rows: list[dict[str, Any]] = []
    details: dict[str, Any] = {}
    (out / "synthetic").mkdir(exist_ok=True)
    for method in spec.methods:
        t0 = time.perf_counter()
        student = copy.deepcopy(p.student)
        student.load_state_dict(init_state)
        info: dict[str, Any] = {"method": method}
        if method in ("gm", "dm"):
            cls = GradientMatching if method == "gm" else DistributionMatching
            dist = cls(student=p.student, teacher=teacher, data=p.train, pool=pool, spec=spec, vocab=p.vocab,
                       pad_id=p.pad_id, device=device, seed=cfg.seed, seq_len=seq_len)
            hist = dist.run()
            syn = dist.result()
            syn.save(out / "synthetic" / f"{method}.safetensors")
            info.update(objective_first=hist[0], objective_last=hist[-1], distill_s=dist.seconds,
                        objective=hist, tokens=spec.size * seq_len)
            summary = train_on_synthetic(student, syn, cfg, temperature=spec.temperature, vocab=p.vocab, device=device)
        else:
            if method in ("kcenter", "sre2l"):
                if features is None:  # computed once, its time charged to every k-center set
                    tf = time.perf_counter()
                    features = teacher_features(teacher, p.train, pool, pad_id=p.pad_id, device=device)
                    feature_s = time.perf_counter() - tf
                else:
                    t0 -= feature_s
                idx = [pool[i] for i in kcenter_indices(features, spec.size, cfg.seed)]
            else:
                idx = [pool[int(j)] for j in torch.randperm(len(pool), generator=torch.Generator().manual_seed(cfg.seed + 3))[: spec.size]]
            subset = p.train.subset(idx)
            info.update(indices=idx, tokens=subset.n_tokens(), distill_s=time.perf_counter() - t0)
            summary = _train_subset(cfg, p, student, subset, method=method, relabel=method in ("sre2l", "random_kd"),
                                    out=out)
            info["distill_s"] += summary.pop("cache_s", 0.0)  # the relabelling is part of building the set
        ev = evaluate_models(student, teacher, p.eval, device=device, vocab=p.vocab, pad_id=p.pad_id,
                             batch_size=cfg.eval.batch_size, max_batches=cfg.eval.max_batches,
                             amp=autocast_dtype(cfg.precision, device), ece_bins=cfg.eval.ece_bins)
        info["train"] = {k: v for k, v in summary.items() if k != "losses"} | {"losses": summary["losses"]}
        info["eval"] = ev
        details[method] = info
        rows.append({"method": method, "sequences": spec.size, "tokens": info["tokens"],
                     "kl_teacher_student": ev["kl_teacher_student"], "student_ppl": ev["student"]["ppl"],
                     "teacher_ppl": ev["teacher"]["ppl"], "top1_agreement": ev["top1_agreement"],
                     "retention_ppl": ev["retention_ppl"], "train_first_loss": summary.get("first_loss"),
                     "train_final_loss": summary.get("final_loss"), "set_s": info["distill_s"],
                     "train_s": summary.get("train_s"), "objective_first": info.get("objective_first"),
                     "objective_last": info.get("objective_last")})
        log.info("dataset distillation %s: KL %.4f ppl %.3f", method, ev["kl_teacher_student"], ev["student"]["ppl"])
    report = {"name": out.name, "kind": "dataset_distill", "table": rows, "methods": details,
              "eval_examples": len(p.eval), "train_sequences": n, "pool": len(pool), "seq_len": seq_len,
              "config": cfg.model_dump(mode="json")}
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    (out / "report.md").write_text(report_markdown(report), encoding="utf-8")
    return DistillResult(out, {"methods": list(spec.methods)}, report)


def _f(v: Any, nd: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}g}"
    return str(v)


def report_markdown(rep: dict[str, Any]) -> str:
    """The comparison table (one row per method) as markdown."""
    lines = [f"# Dataset distillation: {rep.get('name', '')}".rstrip(), "",
             f"Every set has the same number of sequences; one student per set, same initialisation and steps; "
             f"{rep['eval_examples']} held-out sequences; training data {rep['train_sequences']} sequences "
             f"(pool {rep['pool']}).", "",
             "| method | sequences | tokens | held-out KL(teacher‖student) | student ppl | top-1 agreement | "
             "retention (ppl) | objective first → last | set s | train s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rep["table"]:
        obj = "-" if r["objective_first"] is None else f"{_f(r['objective_first'])} → {_f(r['objective_last'])}"
        lines.append(f"| {r['method']} | {r['sequences']} | {r['tokens']} | {_f(r['kl_teacher_student'])} | "
                     f"{_f(r['student_ppl'])} | {_f(r['top1_agreement'])} | {_f(r['retention_ppl'])} | {obj} | "
                     f"{_f(r['set_s'], 3)} | {_f(r['train_s'], 3)} |")
    if rep["table"]:
        lines += ["", f"Teacher held-out perplexity: {_f(rep['table'][0]['teacher_ppl'])}."]
    lines += ["", "random / kcenter: hard labels (CE); random_kd / sre2l: teacher top-k soft labels; gm / dm: "
              "learned soft-token sequences with teacher (or learned) soft labels."]
    return "\n".join(lines) + "\n"
