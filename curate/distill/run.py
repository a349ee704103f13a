"""``distill(cfg)``: load models and data, (build or check the teacher cache), train, evaluate, report.

Outputs in ``cfg.output_dir``: ``student/`` (``save_pretrained``, safetensors, + tokenizer),
``checkpoint/`` (for ``--resume``), ``metrics.jsonl``, ``loss.png`` (with matplotlib), ``report.md`` and
``report.json``, ``config.yaml`` (the resolved config).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from curate.distill.config import DistillConfig
from curate.distill.prepare import (  # re-exported: the public names of a run
    DistillResult,
    Prepared,
    build_cache,
    prepare,
    student_from_teacher,
    teacher_backend,
)

__all__ = ["DistillResult", "Prepared", "build_cache", "distill", "prepare", "student_from_teacher", "teacher_backend"]

log = logging.getLogger(__name__)


def _as_config(cfg: DistillConfig | dict | str | Path) -> DistillConfig:
    if isinstance(cfg, DistillConfig):
        return cfg
    if isinstance(cfg, dict):
        return DistillConfig.model_validate(cfg)
    return DistillConfig.from_yaml(cfg)


def distill(cfg: DistillConfig | dict | str | Path, resume: bool = False) -> DistillResult:
    """Run a whole distillation: ``distill("distill.yaml")`` or ``distill(DistillConfig(...))``."""
    from curate.distill.evaluate import evaluate_models, write_report
    from curate.distill.trainer import DistillTrainer, autocast_dtype
    from curate.models.device import torch_device

    cfg = _as_config(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
    if cfg.self_distill is not None and cfg.self_distill.mode == "born_again":  # a distill run per round
        from curate.distill.self_distill import born_again

        return born_again(cfg, run=distill, resume=resume)
    p = prepare(cfg)
    if cfg.dataset_distill is not None:  # dataset distillation: its own comparison of sets (and its report)
        from curate.distill.dataset_distill import run_dataset_distill

        return run_dataset_distill(cfg, p)
    seq_info: dict[str, Any] | None = None
    if cfg.seq_kd is not None:  # train on the teacher's own answers (Kim & Rush 2016)
        from curate.distill.seq_kd import teacher_sequences

        p.train, seq_info = teacher_sequences(cfg, p)
    cache = None
    cache_info: dict[str, Any] | None = None
    if cfg.teacher_signal.mode == "cache" and cfg.loss.name != "ce" and not cfg.teachers:
        cache = build_cache(cfg, p)
        cache_info = {k: cache.meta.get(k) for k in ("num_sequences", "num_tokens", "bytes_per_token", "build_seconds")}
    online = cfg.teacher_signal.mode == "online" or cfg.on_policy_fraction > 0
    t_train = p.teacher
    if online and cfg.teacher_signal.dtype != "auto":  # a reduced-precision copy for training only
        import copy

        import torch

        t_train = copy.deepcopy(p.teacher).to(getattr(torch, cfg.teacher_signal.dtype))
    multi = None
    if cfg.teachers:  # multi-teacher KD: one signal mixing the teachers (curate.distill.multi_teacher)
        from curate.distill.multi_teacher import MultiTeacher

        multi = MultiTeacher.setup(cfg, p, t_train)
        multi.make_signal(torch_device(cfg.device), autocast_dtype(cfg.precision, torch_device(cfg.device)))
    self_t = None
    if cfg.self_distill is not None:  # the student's EMA copy, an earlier checkpoint or a co-trained peer
        from curate.distill.self_distill import SelfTeacher

        self_t = SelfTeacher.build(cfg, p)
        t_train = self_t.teacher
    modes: dict[str, Any] = {"signal": multi.signal} if multi else {}  # a KD mode's signal= / loss= / aux=
    if self_t is not None:
        modes.update({"hooks": self_t.hooks, **({"signal": self_t.signal} if self_t.signal is not None else {})})
    if cfg.cross_tokenizer is not None:
        from curate.distill.xtok import cross_mode

        modes = cross_mode(cfg, t_train, p.tokenizer, p.teacher_tokenizer, p.train, p.eval, torch_device(cfg.device))
    hidden = None
    if cfg.hidden_states is not None:
        from curate.distill.hidden import HiddenStateKD

        hidden = modes["aux"] = HiddenStateKD(cfg.hidden_states, p.student, t_train)
        cka_before = hidden.cka(p.eval, pad_id=p.pad_id, device=torch_device(cfg.device), batch_size=cfg.eval.batch_size)
    trainer = DistillTrainer(cfg, p.student, p.train, teacher=t_train if online or cache is None else None,
                             cache=cache, eval_data=p.eval, vocab=p.vocab, pad_id=p.pad_id, eos_id=p.eos_id, **modes)
    if cfg.data.order != "random" and cache is not None:
        from curate.distill.modes_uncert import ORDERS, order_values
        from curate.models.topk_cache import cache_signals, curriculum

        signal, direction = cfg.data.order.rsplit("_", 1)
        vals = (order_values(signal, cfg, p, cache, trainer.device) if signal in ORDERS else
                cache_signals(cache.dir, starts=[max(1, n) for n in p.train.n_prompt])[signal])
        trainer.fixed_order = curriculum(vals, descending=direction == "desc")
    if cfg.data.kpod.stages:  # KPOD progressive distillation: final reasoning steps first
        from curate.distill.modes_uncert import kpod_schedule

        trainer.prompt_schedule = kpod_schedule(cfg, p, cache, trainer.total_steps, trainer.device)
    summary = trainer.train(resume=resume)
    sd = out / "student"
    p.student.save_pretrained(sd, safe_serialization=True)
    try:
        p.tokenizer.save_pretrained(sd)
    except Exception as e:  # noqa: BLE001 -- a GGUF-converted tokenizer may refuse; the model is still saved
        log.warning("could not save the tokenizer next to the student: %s", e)
    report: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    if hidden is not None:
        extra["hidden_states"] = hidden.report(cka_before, hidden.cka(p.eval, pad_id=p.pad_id, device=trainer.device,
                                                                      batch_size=cfg.eval.batch_size))
        hidden.close()
    sd_info = self_t.finish(cfg, p) if self_t is not None else None
    if cfg.eval.report and len(p.eval) and cfg.cross_tokenizer is not None:
        from curate.distill.xtok import evaluate_cross

        device = torch_device(cfg.device)
        ev = evaluate_cross(p.student, p.teacher.to(device), p.eval, modes["signal"], device=device, pad_id=p.pad_id,
                            batch_size=cfg.eval.batch_size, max_batches=cfg.eval.max_batches,
                            temperature=cfg.loss.temperature)
        report = {"name": out.name, "eval": ev, "train": summary, "config": cfg.model_dump(mode="json")}
        write_report(out, report)
        from curate.distill.xtok import report_lines as cross_lines

        _append_md(out, cross_lines(ev))
    elif cfg.eval.report and len(p.eval):
        device = torch_device(cfg.device)
        ev = evaluate_models(p.student, p.teacher.to(device), p.eval, device=device, vocab=p.vocab, pad_id=p.pad_id,
                             batch_size=cfg.eval.batch_size, max_batches=cfg.eval.max_batches,
                             amp=autocast_dtype(cfg.precision, device), ece_bins=cfg.eval.ece_bins)
        if cfg.eval.samples:
            from curate.distill.samples import write_samples

            ev.update(write_samples(out, student=p.student, teacher=p.teacher, tokenizer=p.tokenizer, data=p.eval,
                                    n=cfg.eval.samples, max_new_tokens=cfg.eval.sample_tokens, pad_id=p.pad_id,
                                    eos_id=p.eos_id, device=device))
        report = {"name": out.name, "eval": ev, "train": summary, "cache": cache_info,
                  "config": cfg.model_dump(mode="json"), "student_init": p.init, **extra}
        if multi is not None:
            from curate.distill.multi_teacher import contributions_markdown

            report["teachers"] = multi.contributions(p.student, p.eval, device=device, pad_id=p.pad_id)
        if seq_info is not None:
            report["seq_kd"] = seq_info
        if sd_info is not None:
            report["self_distill"] = sd_info
        write_report(out, report)
        if multi is not None:
            with open(out / "report.md", "a", encoding="utf-8") as f:
                f.write(contributions_markdown(report["teachers"]))
        if hidden is not None:
            from curate.distill.hidden import report_lines

            _append_md(out, report_lines(extra["hidden_states"]))
        if sd_info is not None:
            from curate.distill.self_distill import append_markdown

            append_markdown(out, sd_info)
    return DistillResult(out, summary, report)


def _append_md(out: Path, lines: list[str]) -> None:
    """A mode's own section at the end of report.md (after :func:`curate.distill.evaluate.write_report`)."""
    with open(out / "report.md", "a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
