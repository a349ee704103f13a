"""Sequence-level knowledge distillation (Kim & Rush 2016, "Sequence-Level Knowledge Distillation", Sec. 3.2).

Word-level KD matches the teacher's next-token distribution on the data's own sequences. Seq-KD instead
approximates the teacher's *sequence* distribution by its mode: the teacher decodes an answer ``y_hat`` for
every training prompt ``x`` (Kim & Rush: beam search, beam size 5) and the student is trained on the new
pairs with the cross-entropy ``-log p_S(y_hat | x)``; their Seq-KD + Word-KD (the best of their variants) adds
the token-level KD term on the same ``y_hat``. Here that is the ``loss:`` section on the new sequences:
``name: ce`` is Seq-KD, a KD loss with ``alpha`` is ``alpha * CE(y_hat) + (1 - alpha) * T^2 * KD`` (Seq-KD +
Word-KD). ``decoding: sample`` draws the answers instead (TRL GKD's ``seq_kd``).

The answers are generated once and cached on disk as ``<dir>/<key>/answers.jsonl`` + ``meta.json``, where
``key`` hashes the teacher (config, weights, tokenizer), the exact prompt tokens and the generation settings
(decoding, beams, temperature, top-p, max_new_tokens, stop ids, pad id, seed for sampling), so other
settings never reuse them. Prompts are answered in fixed batches, each written whole and flushed; an
interrupted build keeps its finished batches and continues (a sampled batch uses its own seed, so a resumed
build writes what an uninterrupted one would). An answer ends at its first stop id of any kind
(:mod:`curate.distill.stops`); the held-out data stays the dataset's own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import xxhash

from curate.distill.data import TokenData, left_pad
from curate.distill.stops import cut, stop_token_ids

if TYPE_CHECKING:
    from curate.distill.config import DistillConfig, SeqKD
    from curate.distill.prepare import Prepared

log = logging.getLogger(__name__)


def prompts_of(data: TokenData, prompt_tokens: int) -> list[list[int]]:
    """Each example's prompt: its prompt tokens, or for plain text its first ``prompt_tokens`` tokens (as the
    on-policy rollouts take them)."""
    out = []
    for s, n_p in zip(data.seqs, data.n_prompt, strict=True):
        n = n_p or min(prompt_tokens, len(s) - 1)
        out.append(list(s[: max(1, n)]))
    return out


def _prompts_hash(prompts: list[list[int]]) -> str:
    h = xxhash.xxh3_128()
    for pr in prompts:
        h.update(len(pr).to_bytes(4, "little") + np.asarray(pr, dtype=np.int32).tobytes())
    return h.hexdigest()


def fingerprint(teacher: Any, tokenizer: Any, prompts: list[list[int]], sk: SeqKD, *, stops: list[int],
                pad_id: int, seed: int) -> dict[str, Any]:
    """What the cached answers depend on (see the module docstring)."""
    from curate.models.teacher import config_hash, tokenizer_hash, weights_hash

    gen: dict[str, Any] = {"decoding": sk.decoding, "max_new_tokens": sk.max_new_tokens, "stop_token_ids": stops,
                           "pad_id": pad_id, "batch_size": sk.batch_size}
    if sk.decoding == "beam":
        gen["num_beams"] = sk.num_beams
    if sk.decoding == "sample":
        gen.update(temperature=sk.temperature, top_p=sk.top_p, seed=seed)
    return {"teacher_config_hash": config_hash(teacher.config), "teacher_weights_hash": weights_hash(teacher),
            "tokenizer_vocab_hash": tokenizer_hash(tokenizer) if tokenizer is not None else None,
            "prompts_hash": _prompts_hash(prompts), "n_prompts": len(prompts), "generation": gen}


def fingerprint_key(fp: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def _read_batches(path: Path, batch_size: int, n: int) -> dict[int, dict[int, list[int]]]:
    """Finished batches of ``answers.jsonl`` (``{batch: {example: answer}}``); a torn last line or a batch
    missing rows (a crash mid-write) is dropped and the file rewritten without it."""
    rows: dict[int, dict[int, list[int]]] = {}
    if not path.is_file():
        return rows
    bad = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
            rows.setdefault(int(r["b"]), {})[int(r["i"])] = [int(t) for t in r["gen"]]
        except (ValueError, KeyError, TypeError):
            bad += 1
    full = {b: g for b, g in rows.items() if len(g) == min(batch_size, n - b * batch_size)}
    if bad or len(full) != len(rows):
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for b in sorted(full):
                for i in sorted(full[b]):
                    f.write(json.dumps({"b": b, "i": i, "gen": full[b][i]}) + "\n")
        os.replace(tmp, path)
        log.info("seq_kd cache %s: dropped %d torn line(s) and %d unfinished batch(es)", path, bad,
                 len(rows) - len(full))
    return full


@torch.no_grad()
def generate(model: Any, prompts: list[list[int]], sk: SeqKD, *, stops: list[int], pad_id: int,
             device: torch.device) -> list[list[int]]:
    """The teacher's answers (prompt excluded, up to and including the first stop id) to left-padded prompts."""
    ids, att = left_pad(prompts, pad_id)
    lp = ids.shape[1]
    kw: dict[str, Any] = {"pad_token_id": pad_id, "max_new_tokens": sk.max_new_tokens}
    if stops:
        kw["eos_token_id"] = stops
    if sk.decoding == "sample":
        kw.update(do_sample=True, temperature=sk.temperature, top_p=sk.top_p, top_k=0)
    else:
        kw.update(do_sample=False, num_beams=sk.num_beams if sk.decoding == "beam" else 1)
    was = model.training
    model.eval()
    out = model.generate(input_ids=ids.to(device), attention_mask=att.to(device), **kw)
    model.train(was)
    return cut(out[:, lp:].cpu(), stops)


def cached_answers(model: Any, prompts: list[list[int]], root: Path, fp: dict[str, Any], sk: SeqKD, *,
                   stops: list[int], pad_id: int, seed: int, device: torch.device) -> tuple[list[list[int]], int]:
    """Every prompt's answer from the cache in ``root``, generating the missing batches; returns the answers
    and how many were generated now."""
    root.mkdir(parents=True, exist_ok=True)
    meta_p, ans_p = root / "meta.json", root / "answers.jsonl"
    if meta_p.is_file():
        meta = json.loads(meta_p.read_text(encoding="utf-8"))
        if meta.get("fingerprint") != fp:
            raise ValueError(f"seq_kd cache {root} was made with other settings (key collision); remove it")
    meta = {"fingerprint": fp, "complete": False}
    meta_p.write_text(json.dumps(meta, indent=1), encoding="utf-8")
    bs, n = sk.batch_size, len(prompts)
    done = _read_batches(ans_p, bs, n)
    made = 0
    model.to(device)
    with open(ans_p, "a", encoding="utf-8") as f:
        for b in range((n + bs - 1) // bs):
            if b in done:
                continue
            idx = list(range(b * bs, min(n, (b + 1) * bs)))
            with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
                torch.manual_seed(seed * 1_000_003 + b)  # each sampled batch its own seed: resumable
                gen = generate(model, [prompts[i] for i in idx], sk, stops=stops, pad_id=pad_id, device=device)
            f.write("".join(json.dumps({"b": b, "i": i, "gen": g}) + "\n" for i, g in zip(idx, gen, strict=True)))
            f.flush()
            done[b] = dict(zip(idx, gen, strict=True))
            made += len(idx)
    meta["complete"] = True
    meta_p.write_text(json.dumps(meta, indent=1), encoding="utf-8")
    flat = {i: g for rows in done.values() for i, g in rows.items()}
    return [flat[i] for i in range(n)], made


def teacher_sequences(cfg: DistillConfig, p: Prepared) -> tuple[TokenData, dict[str, Any]]:
    """The training data rebuilt as prompt + teacher answer (answer tokens carry the loss), and the report's
    ``seq_kd`` section."""
    from curate.models.device import torch_device

    sk = cfg.seq_kd
    assert sk is not None
    t0 = time.perf_counter()
    prompts = prompts_of(p.train, sk.prompt_tokens)
    stops = stop_token_ids(sk.stop_token_ids, eos_id=p.eos_id, model=p.teacher)
    fp = fingerprint(p.teacher, p.tokenizer, prompts, sk, stops=stops, pad_id=p.pad_id, seed=cfg.seed)
    key = fingerprint_key(fp)
    root = Path(sk.dir or Path(cfg.output_dir) / "seq_kd") / key
    answers, made = cached_answers(p.teacher, prompts, root, fp, sk, stops=stops, pad_id=p.pad_id, seed=cfg.seed,
                                   device=torch_device(cfg.device))
    seqs, n_prompt, task, lens = [], [], [], []
    stopped = skipped = 0
    for i, (q, a) in enumerate(zip(prompts, answers, strict=True)):
        s = (q + a)[: cfg.data.max_len]
        if len(s) <= len(q):  # an empty answer, or a prompt that fills max_len: nothing to learn from
            skipped += 1
            continue
        seqs.append(s)
        n_prompt.append(len(q))
        lens.append(len(s) - len(q))
        stopped += bool(a) and a[-1] in stops
        if p.train.task:
            task.append(p.train.task[i])
    if not seqs:
        raise ValueError("seq_kd: the teacher gave no usable answer (every answer empty or cut by data.max_len)")
    if skipped:
        log.warning("seq_kd: %d of %d examples skipped (empty teacher answer, or the prompt fills max_len)",
                    skipped, len(prompts))
    info = {"dir": str(root), "key": key, "decoding": sk.decoding, "examples": len(seqs), "skipped": skipped,
            "generated": made, "reused": len(prompts) - made, "mean_answer_tokens": sum(lens) / len(lens),
            "stopped_fraction": stopped / len(seqs), "stop_token_ids": stops,
            "seconds": time.perf_counter() - t0}
    log.info("seq_kd: %d teacher answers (%d generated, %d from %s), %.1f tokens on average", len(seqs), made,
             info["reused"], root, info["mean_answer_tokens"])
    return TokenData(seqs, n_prompt, task), info
