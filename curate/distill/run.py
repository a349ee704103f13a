"""``distill(cfg)``: load models and data, (build or check the teacher cache), train, evaluate, report.

Outputs in ``cfg.output_dir``: ``student/`` (``save_pretrained``, safetensors, + tokenizer),
``checkpoint/`` (for ``--resume``), ``metrics.jsonl``, ``loss.png`` (with matplotlib), ``report.md`` and
``report.json``, ``config.yaml`` (the resolved config).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate.core.errors import ConfigError
from curate.distill.config import DistillConfig

log = logging.getLogger(__name__)


@dataclass
class DistillResult:
    output_dir: Path
    train: dict[str, Any]
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prepared:
    teacher: Any
    student: Any
    tokenizer: Any
    train: Any
    eval: Any
    vocab: int
    pad_id: int
    eos_id: int | None
    init: dict[str, Any] | None = None   # how the student was initialised from the teacher (pruning info)
    teacher_tokenizer: Any = None        # cross_tokenizer runs: the teacher's own (``tokenizer`` is the student's)


def _as_config(cfg: DistillConfig | dict | str | Path) -> DistillConfig:
    if isinstance(cfg, DistillConfig):
        return cfg
    if isinstance(cfg, dict):
        return DistillConfig.model_validate(cfg)
    return DistillConfig.from_yaml(cfg)


def prepare(cfg: DistillConfig, need_student: bool = True) -> Prepared:
    """Load the teacher, build/load the student, check the vocabulary contract, tokenise the data."""
    import torch

    from curate.distill.data import load_data
    from curate.models.causal_lm import load_causal_lm, shared_vocab, vocab_rows

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    # on CPU in float32 for 'auto' (the trainer moves models and autocasts); GGUF goes through the cache
    teacher, t_tok, _ = load_causal_lm(cfg.teacher, device="cpu")
    log.info("teacher loaded in %.1f s", time.perf_counter() - t0)
    if t_tok is None:
        raise ConfigError("the teacher has no tokenizer: give teacher.tokenizer")
    if cfg.cross_tokenizer is not None:  # the student keeps its own tokenizer (curate.distill.xtok)
        from curate.distill.xtok import prepare_cross

        student, s_tok, tr, ev, rows, pad = prepare_cross(cfg, teacher, t_tok)
        return Prepared(teacher, student, s_tok, tr, ev, rows, pad, s_tok.eos_token_id, teacher_tokenizer=t_tok)
    student = s_tok = None
    init = None
    s_rows = vocab_rows(teacher)
    train, ev = load_data(cfg.data, t_tok, cfg.seed)
    pad = t_tok.pad_token_id if t_tok.pad_token_id is not None else (t_tok.eos_token_id or 0)
    if need_student:
        torch.manual_seed(cfg.seed)
        if cfg.student.from_teacher is not None:
            student, init = student_from_teacher(cfg, teacher, train, int(pad))
            s_tok = t_tok
        else:
            student, s_tok, _ = load_causal_lm(cfg.student, device="cpu", base_config=teacher.config,
                                               tokenizer=t_tok)
        s_rows = vocab_rows(student)
    vocab = shared_vocab(t_tok, s_tok if s_tok is not None else t_tok, vocab_rows(teacher), s_rows,
                         override=cfg.shared_vocab)
    return Prepared(teacher, student, t_tok, train, ev, vocab, int(pad), t_tok.eos_token_id, init)


def student_from_teacher(cfg: DistillConfig, teacher: Any, train: Any, pad_id: int) -> tuple[Any, dict[str, Any]]:
    """The student as a pruned copy of the teacher (``student.from_teacher``), scored on the first
    ``calibration_examples`` training examples (loss positions = the training loss positions)."""
    from curate.distill.data import collate
    from curate.models.pruning import prune_from_teacher

    ft = cfg.student.from_teacher
    assert ft is not None
    n = min(ft.calibration_examples, len(train))
    batches = []
    for a in range(0, n, ft.batch_size):
        idx = range(a, min(n, a + ft.batch_size))
        b = collate([train.seqs[i] for i in idx], [train.n_prompt[i] for i in idx], pad_id)
        batches.append((b["input_ids"], b["attention_mask"], b["labels"]))
    t0 = time.perf_counter()
    student, info = prune_from_teacher(teacher, batches, keep_layers=ft.keep_layers, importance=ft.importance,
                                       intermediate_size=ft.intermediate_size, layers=ft.layers)
    info["seconds"] = time.perf_counter() - t0
    info["calibration_examples"] = n
    log.info("student from teacher: kept layers %s (%s), calibration NLL %.3f -> %.3f in %.1f s",
             info["kept_layers"], info["importance"], info["calibration_nll_teacher"],
             info["calibration_nll_student_init"], info["seconds"])
    return student, info


def teacher_backend(cfg: DistillConfig, p: Prepared) -> Any:
    """The loaded teacher as a :class:`curate.models.teacher.LocalHFTeacher` (for caching)."""
    from curate.models.device import torch_device
    from curate.models.teacher import LocalHFTeacher

    name = None
    if cfg.teacher.path:
        name = cfg.teacher.path + (f"/{cfg.teacher.gguf_file}" if cfg.teacher.gguf_file else "")
    return LocalHFTeacher(p.teacher, tokenizer=p.tokenizer, name=name, device=str(torch_device(cfg.device)))


def build_cache(cfg: DistillConfig, p: Prepared | None = None, batch_size: int = 8) -> Any:
    """Build (or resume, or reuse) the top-k teacher cache of the training data; returns the TeacherCache.

    The cache is checked against the teacher's fingerprint, k, max_len and the exact training tokens;
    a mismatched cache is refused (CacheMismatchError) rather than silently used."""
    from curate.distill.cache import TeacherCache, build_teacher_cache, capture_settings

    if not cfg.teacher_signal.dir:
        raise ConfigError("teacher_signal.dir is not set (where the cache goes)")
    if cfg.cross_tokenizer is not None:  # the cache holds teacher rows of the student's tokens
        raise ConfigError("cross_tokenizer runs score each text with the online teacher on its own tokens (no cache)")
    p = p or prepare(cfg, need_student=False)
    backend = teacher_backend(cfg, p)
    if cfg.teacher_signal.dtype != "auto":  # a copy: the fp32 teacher stays for the held-out report
        import copy

        import torch

        backend.model = copy.deepcopy(p.teacher).to(backend.device, getattr(torch, cfg.teacher_signal.dtype)).eval()
    fp = p.train.fingerprint()
    k = cfg.teacher_signal.k
    expected = capture_settings(backend, k, max_len=cfg.data.max_len, logprob_dtype="float32",
                                dataset_fingerprint=fp)
    d = Path(cfg.teacher_signal.dir)
    if (d / "meta.json").exists():
        cache = TeacherCache(d)
        if cache.meta.get("complete"):
            cache.check_compatible(expected)
            return cache
    seqs = p.train.seqs
    batches = (seqs[i:i + batch_size] for i in range(0, len(seqs), batch_size))
    t0 = time.perf_counter()
    cache = build_teacher_cache(backend, batches, d, k, max_len=cfg.data.max_len, dataset_fingerprint=fp,
                                pad_id=p.pad_id, progress=cfg.progress)
    log.info("teacher cache built in %.1f s (%d sequences)", time.perf_counter() - t0, len(cache))
    cache.check_compatible(expected)
    return cache


def distill(cfg: DistillConfig | dict | str | Path, resume: bool = False) -> DistillResult:
    """Run a whole distillation: ``distill("distill.yaml")`` or ``distill(DistillConfig(...))``."""
    from curate.distill.evaluate import evaluate_models, write_report
    from curate.distill.trainer import DistillTrainer, autocast_dtype
    from curate.models.device import torch_device

    cfg = _as_config(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
    p = prepare(cfg)
    if cfg.dataset_distill is not None:  # dataset distillation: its own comparison of sets (and its report)
        from curate.distill.dataset_distill import run_dataset_distill

        return run_dataset_distill(cfg, p)
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
    modes: dict[str, Any] = {"signal": multi.signal} if multi else {}  # a KD mode's signal= / loss= / aux=
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
        write_report(out, report)
        if multi is not None:
            with open(out / "report.md", "a", encoding="utf-8") as f:
                f.write(contributions_markdown(report["teachers"]))
        if hidden is not None:
            from curate.distill.hidden import report_lines

            _append_md(out, report_lines(extra["hidden_states"]))
    return DistillResult(out, summary, report)


def _append_md(out: Path, lines: list[str]) -> None:
    """A mode's own section at the end of report.md (after :func:`curate.distill.evaluate.write_report`)."""
    with open(out / "report.md", "a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
