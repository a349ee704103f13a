"""The building blocks of a distillation run, shared by :func:`curate.distill.run.distill` and the modes that
run their own loop (dataset distillation, multi-teacher caches): load the teacher, build or load the student
(:func:`prepare`), the teacher as a caching backend (:func:`teacher_backend`), the top-k teacher cache
(:func:`build_cache`), and the result types. Modes import from here, never from ``run`` (which dispatches to
them), so the package has no import cycle.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate.core.errors import ConfigError
from curate.distill.config import DistillConfig

log = logging.getLogger("curate.distill.run")


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
