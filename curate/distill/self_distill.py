"""Self-distillation and co-training (survey Sec. 3.4): the student's own copy as teacher (``self_distill:``).

Each mode is a teacher signal (+ a step hook) handed to the one training loop (:mod:`curate.distill.trainer`);
the per-token objective is the ``loss:`` section, ``alpha * CE + (1 - alpha) * T^2 * KD(self-teacher || student)``.

* ``ema`` -- Mean Teacher (Tarvainen & Valpola 2017, Eq. 1 and their ``update_ema_variables``): the teacher
  starts as a copy of the student and after every optimizer step ``t`` becomes

      theta_T <- a_t * theta_T + (1 - a_t) * theta_S,   a_t = min(decay, 1 - 1/(t + 1))  (ramp-up; ``ema_warmup``)

  or ``a_t = decay`` without the ramp-up. ``decay`` 0.999 is the paper's value after ramp-up (0.99 during it).
  Buffers are copied. The EMA weights are saved in the trainer checkpoint, so a resumed run continues the same
  average; the final EMA model is written to ``ema_teacher/`` (it is often better than the student itself).
* ``checkpoint`` -- a frozen earlier student (a ``student/`` folder from ``save_pretrained``, or a
  ``checkpoint/`` folder's ``model.safetensors`` of this architecture) as the online teacher.
* ``born_again`` -- Born-Again Networks (Furlanello et al. 2018, Sec. 3): generation ``k + 1`` is trained from
  the same initialisation (same seed, same config) with generation ``k`` as its teacher,
  ``min_theta L(f(x, theta_{k+1}), f(x, theta_k))``; generation 1 learns from the configured teacher, or from the
  labels only (``first_round: labels``, the paper's setting). Each round runs ``distill`` in
  ``round_<k>/`` (its own checkpoint, metrics and report, resumable round by round) and the top-level report
  compares the rounds; ``student/`` is the last round's.
* ``mutual`` -- Deep Mutual Learning (Zhang et al. 2018, Eq. 1-2 and Algorithm 1) generalised to the
  ``loss:`` section: the student S and a peer P (a copy of the configured teacher, the co-training case where
  the teacher also updates, or a second student from ``seed + 1``, DML's cohort of two) are both trained, per
  valid token,

      L_S = alpha * CE(y, p_S) + (1 - alpha) * T^2 * KD(p_P^T || p_S^T)
      L_P = alpha * CE(y, p_P) + (1 - alpha) * T^2 * KD(p_S^T || p_P^T)

  (DML: ``alpha`` = 1/2 and T = 1 give ``(CE + KL) / 2``, its ``L_Theta1 = L_C1 + D_KL(p2 || p1)`` up to a
  factor 2); the other model's distribution is a constant (no gradient through it). As in DML's Algorithm 1 the
  updates alternate on the same batch: S takes its step against P, then P takes its step against the *updated*
  S. P has its own AdamW and schedule (``peer_lr``); its state rides in the student's checkpoint and the
  final peer is written to ``peer/``.

The report of ``ema`` / ``checkpoint`` / ``mutual`` runs gains a ``self_distill`` section: the self-teacher's
held-out perplexity and its agreement with the configured teacher.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from curate.distill.config import DistillConfig, SelfDistill, TeacherSignal

if TYPE_CHECKING:
    from collections.abc import Callable

    from curate.distill.prepare import DistillResult, Prepared
    from curate.distill.trainer import DistillTrainer

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- EMA
def ema_decay_at(step: int, decay: float, warmup: bool) -> float:
    """The EMA coefficient after optimizer step ``step`` (1-based): Mean Teacher's ramp-up
    ``min(decay, 1 - 1/(step + 1))``, or ``decay``."""
    return min(decay, 1.0 - 1.0 / (step + 1)) if warmup else decay


@torch.no_grad()
def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, decay: float) -> None:
    """``teacher <- decay * teacher + (1 - decay) * student`` for every parameter (by name); buffers copied."""
    s_params = dict(student.named_parameters())
    for name, t in teacher.named_parameters():
        t.mul_(decay).add_(s_params[name].detach().to(t.dtype), alpha=1.0 - decay)
    s_bufs = dict(student.named_buffers())
    for name, b in teacher.named_buffers():
        if name in s_bufs:
            b.copy_(s_bufs[name])


class EMAHook:
    """After each optimizer step, moves the EMA teacher towards the student (see the module docstring)."""

    name = "ema_teacher"

    def __init__(self, model: torch.nn.Module, *, decay: float, warmup: bool) -> None:
        self.model, self.decay, self.warmup = model, decay, warmup

    def after_step(self, trainer: DistillTrainer) -> dict[str, Any]:
        a = ema_decay_at(trainer.step, self.decay, self.warmup)
        ema_update(self.model, trainer.student, a)
        return {"ema_decay": a}

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])


# ----------------------------------------------------------------------------------------------- checkpoint
def load_frozen(folder: str | Path, like: torch.nn.Module) -> torch.nn.Module:
    """An earlier student as a module: a ``save_pretrained`` folder (``config.json``), or a trainer
    ``checkpoint/`` whose ``model.safetensors`` is loaded into a copy of ``like`` (same architecture)."""
    from safetensors.torch import load_model

    d = Path(folder)
    weights = d / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"self_distill.checkpoint: no model.safetensors in {d}")
    if (d / "config.json").is_file():
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32)
    m = copy.deepcopy(like)
    load_model(m, str(weights), device="cpu")
    return m


# ----------------------------------------------------------------------------------------------- mutual
class MutualHook:
    """Deep mutual learning's second half-step: after the student's step, the peer's trainer takes its step on
    the same micro-batches (same seed, data and batch size give the same order) against the updated student."""

    name = "mutual_peer"

    def __init__(self, peer_trainer: DistillTrainer) -> None:
        self.trainer = peer_trainer

    def after_step(self, trainer: DistillTrainer) -> dict[str, Any]:
        if self.trainer.micro_pos != trainer.micro_pos - trainer.cfg.optim.grad_accum:
            raise RuntimeError("mutual learning: the peer fell out of step with the student")
        rec = self.trainer.train_step()
        return {f"peer_{k}": rec[k] for k in ("loss", "ce", "kd") if k in rec}

    def state_dict(self) -> dict[str, Any]:
        t = self.trainer
        return {"model": t.student.state_dict(), "optimizer": t.optimizer.state_dict(),
                "scheduler": t.scheduler.state_dict(), "step": t.step, "micro_pos": t.micro_pos,
                "tokens_seen": t.tokens_seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        t = self.trainer
        t.student.load_state_dict(state["model"])
        t.optimizer.load_state_dict(state["optimizer"])
        t.scheduler.load_state_dict(state["scheduler"])
        t.step, t.micro_pos, t.tokens_seen = int(state["step"]), int(state["micro_pos"]), int(state["tokens_seen"])


def _autocast(device: torch.device, amp: torch.dtype | None) -> Any:
    if amp is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=amp)


def online_signal(model: torch.nn.Module, cfg: DistillConfig, vocab: int) -> Any:
    """An :class:`~curate.distill.signals.OnlineTeacher` over ``model`` that leaves it trainable (the trainer's
    own ``teacher=`` freezes its teacher)."""
    from curate.distill.fused import Scratch
    from curate.distill.signals import OnlineTeacher
    from curate.distill.trainer import autocast_dtype
    from curate.models.causal_lm import lm_parts
    from curate.models.device import torch_device

    dev = torch_device(cfg.device)
    amp = autocast_dtype(cfg.precision, dev)
    model.to(dev)
    return OnlineTeacher(model, vocab=vocab, device=dev, parts=lm_parts(model), autocast=_autocast(dev, amp), amp=amp,
                         scratch=Scratch(dev))


def mutual_peer(cfg: DistillConfig, p: Prepared) -> tuple[torch.nn.Module, Any, MutualHook]:
    """The peer model, the student's signal (the peer, online) and the hook that trains the peer."""
    from curate.distill.trainer import DistillTrainer
    from curate.models.causal_lm import load_causal_lm

    sd = cfg.self_distill
    assert sd is not None
    if sd.peer == "teacher":
        peer = copy.deepcopy(p.teacher)  # the loaded teacher stays the report's fixed reference
    else:
        state = torch.get_rng_state()
        torch.manual_seed(cfg.seed + 1)
        peer, _, _ = load_causal_lm(cfg.student, device="cpu", base_config=p.teacher.config, tokenizer=p.tokenizer)
        torch.set_rng_state(state)
    for w in peer.parameters():  # a trainer that had the teacher as its teacher froze it
        w.requires_grad_(True)
    optim = cfg.optim.model_copy(update={"lr": sd.peer_lr or cfg.optim.lr})
    peer_cfg = cfg.model_copy(update={"optim": optim, "output_dir": str(Path(cfg.output_dir) / "peer"),
                                      "self_distill": None})
    peer_trainer = DistillTrainer(peer_cfg, peer, p.train, vocab=p.vocab, pad_id=p.pad_id, eos_id=p.eos_id,
                                  signal=online_signal(p.student, cfg, p.vocab))
    return peer, online_signal(peer, cfg, p.vocab), MutualHook(peer_trainer)


# ----------------------------------------------------------------------------------------------- the mode
class SelfTeacher:
    """What ``distill`` hands the trainer for ``self_distill`` modes ema / checkpoint / mutual: a frozen
    ``teacher`` module (ema, checkpoint) or a ``signal`` over a trained peer (mutual), and the step ``hooks``."""

    def __init__(self, mode: str, model: torch.nn.Module, *, teacher: torch.nn.Module | None = None,
                 signal: Any = None, hooks: tuple[Any, ...] = (), source: str | None = None) -> None:
        self.mode, self.model, self.teacher, self.signal, self.hooks = mode, model, teacher, signal, hooks
        self.source = source

    @classmethod
    def build(cls, cfg: DistillConfig, p: Prepared) -> SelfTeacher:
        sd = cfg.self_distill
        assert sd is not None and sd.mode != "born_again"
        if sd.mode == "ema":
            ema = copy.deepcopy(p.student)
            return cls("ema", ema, teacher=ema, hooks=(EMAHook(ema, decay=sd.ema_decay, warmup=sd.ema_warmup),))
        if sd.mode == "checkpoint":
            assert sd.checkpoint
            frozen = load_frozen(sd.checkpoint, p.student)
            return cls("checkpoint", frozen, teacher=frozen, source=sd.checkpoint)
        peer, signal, hook = mutual_peer(cfg, p)
        return cls("mutual", peer, signal=signal, hooks=(hook,), source=sd.peer)

    @property
    def folder(self) -> str | None:
        """Where the self-teacher is saved (the frozen checkpoint is already on disk)."""
        return {"ema": "ema_teacher", "mutual": "peer"}.get(self.mode)

    def finish(self, cfg: DistillConfig, p: Prepared) -> dict[str, Any]:
        """Save the EMA model / the peer next to the student; when the run writes a report, evaluate it on the
        held-out data against the configured teacher. Returns the report's ``self_distill`` section."""
        from curate.distill.evaluate import evaluate_models
        from curate.distill.trainer import autocast_dtype
        from curate.models.device import torch_device

        out = Path(cfg.output_dir)
        info: dict[str, Any] = {"mode": self.mode, "source": self.source}
        if self.folder:
            self.model.save_pretrained(out / self.folder, safe_serialization=True)
            info["saved"] = self.folder
        if cfg.eval.report and len(p.eval):
            device = torch_device(cfg.device)
            ev = evaluate_models(self.model, p.teacher.to(device), p.eval, device=device, vocab=p.vocab,
                                 pad_id=p.pad_id, batch_size=cfg.eval.batch_size, max_batches=cfg.eval.max_batches,
                                 amp=autocast_dtype(cfg.precision, device), ece_bins=cfg.eval.ece_bins)
            info["eval"] = {"ppl": ev["student"]["ppl"], "nll": ev["student"]["nll"],
                            "kl_teacher_self": ev.get("kl_teacher_student"), "top1_agreement": ev.get("top1_agreement"),
                            "retention_ppl": ev.get("retention_ppl"), "params": ev["student"]["params"]}
        return info


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def append_markdown(out: Path, section: dict[str, Any]) -> None:
    """Add the self-teacher's figures to ``report.md``."""
    ev = section.get("eval")
    if not ev:
        return
    name = {"ema": "EMA teacher", "checkpoint": "frozen checkpoint teacher", "mutual": "co-trained peer"}[section["mode"]]
    lines = ["", f"## Self-distillation ({section['mode']})", "", f"| {name} | value |", "|---|---|"]
    for key, label in (("ppl", "held-out perplexity"), ("nll", "held-out NLL"),
                       ("kl_teacher_self", "mean token KL(configured teacher || it)"),
                       ("top1_agreement", "top-1 agreement with the configured teacher"), ("params", "parameters")):
        lines.append(f"| {label} | {_fmt(ev.get(key))} |")
    with open(out / "report.md", "a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------- born again
def round_config(cfg: DistillConfig, r: int, prev: Path | None) -> DistillConfig:
    """Round ``r`` (1-based) of born-again training: round 1 is a plain run (on the labels with
    ``first_round: labels``), round ``r > 1`` the ``checkpoint`` mode with round ``r - 1``'s student."""
    sd = cfg.self_distill
    assert sd is not None
    out = Path(cfg.output_dir)
    d = cfg.model_dump(mode="json")
    d["output_dir"] = str(out / f"round_{r}")
    d["self_distill"] = None
    if d.get("seq_kd") is not None and not d["seq_kd"].get("dir"):
        d["seq_kd"]["dir"] = str(out / "seq_kd")  # one set of teacher answers for every round
    if r == 1:
        if sd.first_round == "labels":
            d["loss"]["name"] = "ce"
            d["on_policy_fraction"] = 0.0
            d["teacher_signal"]["mode"] = "online"
    else:
        assert prev is not None
        d["self_distill"] = SelfDistill(mode="checkpoint", checkpoint=str(prev / "student")).model_dump(mode="json")
        d["teacher_signal"] = TeacherSignal(mode="online").model_dump(mode="json")
    return DistillConfig.model_validate(d)


def _round_row(r: int, res: Any) -> dict[str, Any]:
    ev = res.report.get("eval", {}) if res.report else {}
    s = ev.get("student", {})
    return {"round": r, "teacher": "labels" if res.report.get("config", {}).get("loss", {}).get("name") == "ce"
            else ("configured teacher" if r == 1 else f"round {r - 1} student"),
            "ppl": s.get("ppl"), "nll": s.get("nll"), "retention_ppl": ev.get("retention_ppl"),
            "top1_agreement": ev.get("top1_agreement"), "kl_teacher_student": ev.get("kl_teacher_student"),
            "final_loss": res.train.get("final_loss"), "steps": res.train.get("steps"),
            "train_s": res.train.get("train_s")}


def born_again(cfg: DistillConfig, *, run: Callable[..., DistillResult], resume: bool = False) -> DistillResult:
    """``rounds`` born-again generations (see the module docstring), each a ``run(round_cfg, resume=...)``
    (:func:`curate.distill.run.distill`, passed in so this module does not import its caller); ``resume`` skips
    finished rounds and continues the interrupted one from its checkpoint."""
    from curate.distill.evaluate import write_report
    from curate.distill.prepare import DistillResult

    sd = cfg.self_distill
    assert sd is not None
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    prev: Path | None = None
    last: dict[str, Any] = {}
    for r in range(1, sd.rounds + 1):
        rcfg = round_config(cfg, r, prev)
        rdir = Path(rcfg.output_dir)
        done = rdir / "round_done.json"
        if resume and done.is_file():
            last = json.loads(done.read_text(encoding="utf-8"))
            log.info("born-again round %d: done, resumed", r)
        else:
            done.unlink(missing_ok=True)
            res = run(rcfg, resume=resume and (rdir / "checkpoint" / "state.pt").is_file())
            last = {"row": _round_row(r, res), "train": res.train, "eval": res.report.get("eval")}
            done.write_text(json.dumps(last, default=str), encoding="utf-8")
        rows.append(last["row"])
        prev = rdir
    assert prev is not None
    final = out / "student"
    if final.exists():
        shutil.rmtree(final)  # born_again's own copy of an earlier round's student
    shutil.copytree(prev / "student", final)
    report: dict[str, Any] = {"name": out.name, "mode": "born_again", "rounds": rows, "train": last["train"],
                              "config": cfg.model_dump(mode="json")}
    if last.get("eval"):
        report["eval"] = last["eval"]
        write_report(out, report)
    else:
        (out / "report.json").write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
        (out / "report.md").write_text(f"# Born-again report: {out.name}\n", encoding="utf-8")
    with open(out / "report.md", "a", encoding="utf-8") as f:
        f.write("\n" + rounds_markdown(rows))
    return DistillResult(out, last["train"], report)


def rounds_markdown(rows: list[dict[str, Any]]) -> str:
    """The born-again rounds side by side (held-out figures against the configured teacher)."""
    lines = ["## Born-again rounds (Furlanello et al. 2018)", "",
             "| round | taught by | held-out ppl | retention (teacher ppl / student ppl) | top-1 agreement | "
             "KL(teacher || student) | final train loss | steps |", "|---|---|---|---|---|---|---|---|"]
    for w in rows:
        lines.append(f"| {w['round']} | {w['teacher']} | {_fmt(w['ppl'])} | {_fmt(w['retention_ppl'])} | "
                     f"{_fmt(w['top1_agreement'])} | {_fmt(w['kl_teacher_student'])} | {_fmt(w['final_loss'])} | "
                     f"{_fmt(w['steps'])} |")
    return "\n".join(lines) + "\n"
