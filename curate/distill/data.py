"""Training data for the distillation trainer: read jsonl / curate outputs, tokenise, batch.

A :class:`TokenData` holds token-id sequences and, per sequence, how many leading tokens are prompt
(no loss on them). :func:`collate` right-pads a list of sequences into ``input_ids``,
``attention_mask`` and ``labels`` (``-100`` at prompt and padding positions; labels are *unshifted*,
HF style: position t's label is token t, predicted from positions < t).
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xxhash

from curate.core.errors import ConfigError, InputError
from curate.distill.config import CHAT
from curate.models.causal_lm import IGNORE

if TYPE_CHECKING:
    import polars as pl
    import torch

    from curate.distill.config import DataSpec

TASK_LABEL, TASK_RATIONALE = 0, 1


@dataclass
class TokenData:
    """Token-id sequences plus the number of prompt tokens of each (0 for plain text)."""

    seqs: list[list[int]]
    n_prompt: list[int] = field(default_factory=list)
    #: per sequence, its task in rationale mode: TASK_LABEL or TASK_RATIONALE (empty: one task)
    task: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.n_prompt:
            self.n_prompt = [0] * len(self.seqs)
        if len(self.n_prompt) != len(self.seqs):
            raise ValueError("n_prompt must have one entry per sequence")
        if self.task and len(self.task) != len(self.seqs):
            raise ValueError("task must be empty or have one entry per sequence")

    def __len__(self) -> int:
        return len(self.seqs)

    def subset(self, idx: Sequence[int]) -> TokenData:
        return TokenData([self.seqs[i] for i in idx], [self.n_prompt[i] for i in idx],
                         [self.task[i] for i in idx] if self.task else [])

    def n_tokens(self) -> int:
        return sum(len(s) for s in self.seqs)

    def fingerprint(self) -> str:
        """Hash of the exact token ids and prompt lengths (a cache built on other data is refused)."""
        h = xxhash.xxh3_128()
        for s, n in zip(self.seqs, self.n_prompt, strict=True):
            h.update(len(s).to_bytes(4, "little") + n.to_bytes(4, "little"))
            h.update(np.asarray(s, dtype=np.int32).tobytes())
        if self.task:  # two-task data hashes differently from the same tokens as one task
            h.update(np.asarray(self.task, dtype=np.int8).tobytes())
        return h.hexdigest()

    @classmethod
    def from_blocks(cls, ids: Sequence[int], block: int) -> TokenData:
        """Cut one long token stream into consecutive blocks of ``block`` tokens (char-level corpora)."""
        n = len(ids) // block
        return cls([list(map(int, ids[i * block:(i + 1) * block])) for i in range(n)])


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of ``prompts`` left-padded to the longest, as ``generate`` wants them
    (new tokens then start at the same column ``ids.shape[1]`` in every row)."""
    import torch

    lp = max(len(q) for q in prompts)
    ids = torch.full((len(prompts), lp), pad_id, dtype=torch.long)
    att = torch.zeros_like(ids)
    for r, q in enumerate(prompts):
        ids[r, lp - len(q):] = torch.as_tensor(q)
        att[r, lp - len(q):] = 1
    return ids, att


def collate(seqs: Sequence[Sequence[int]], n_prompt: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad into ``input_ids``, ``attention_mask`` and ``labels`` (-100 on prompt and padding)."""
    import torch

    L = max(len(s) for s in seqs)
    B = len(seqs)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    att = torch.zeros((B, L), dtype=torch.long)
    lab = torch.full((B, L), IGNORE, dtype=torch.long)
    for i, (s, p) in enumerate(zip(seqs, n_prompt, strict=True)):
        t = torch.as_tensor(list(s), dtype=torch.long)
        ids[i, : len(s)] = t
        att[i, : len(s)] = 1
        lab[i, p: len(s)] = t[p:]
    return {"input_ids": ids, "attention_mask": att, "labels": lab}


def read_records(paths: Sequence[str]) -> pl.DataFrame:
    """Rows of jsonl files (``.jsonl``, ``.jsonl.gz``, ``.json`` lines) or curate output folders."""
    import polars as pl  # lazily: a KD run from a cache or TokenData never needs it

    frames = []
    for p in map(Path, paths):
        if p.is_dir():
            from curate.io.writers import read_output

            frames.append(read_output(p))
        elif p.name.endswith(".gz"):
            with gzip.open(p, "rb") as fh:
                frames.append(pl.read_ndjson(io.BytesIO(fh.read()), infer_schema_length=None))
        elif p.suffix == ".parquet":
            frames.append(pl.read_parquet(p))
        else:
            frames.append(pl.read_ndjson(p, infer_schema_length=None))
    if not frames:
        raise InputError(f"no data read from {list(paths)}")
    return pl.concat(frames, how="diagonal_relaxed")


def tokenize_records(df: pl.DataFrame, tokenizer: Any, spec: DataSpec) -> TokenData:
    """Tokenise rows: ``text_field``, or ``template`` over prompt/response (loss on the response only), or in
    rationale mode two prompt/response examples per row (:func:`rationale_frame`), tasks in ``.task``."""
    eos = getattr(tokenizer, "eos_token_id", None) if spec.add_eos else None
    tasks_in: list[int] | None = None
    if spec.mode == "rationale":
        df = rationale_frame(df, spec)
        tasks_in = df["__task"].to_list()
        spec = spec.model_copy(update={"mode": "auto", "prompt_field": "__prompt", "response_field": "__response"})
    prompts, fulls = record_texts(df, spec, tokenizer)
    f_ids = tokenizer(fulls, add_special_tokens=False)["input_ids"]
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"] if spec.prompt_field else [[] for _ in f_ids]
    seqs: list[list[int]] = []
    n_prompt: list[int] = []
    task: list[int] = []
    for j, (p, f) in enumerate(zip(p_ids, f_ids, strict=True)):
        n_p = len(p) if f[: len(p)] == p else _common_prefix(p, f)  # BPE may merge across the boundary
        s = list(f) + ([eos] if eos is not None else [])
        s = s[: spec.max_len]
        if len(s) - n_p < 2 or len(s) < spec.min_tokens:
            continue
        seqs.append(s)
        n_prompt.append(n_p)
        if tasks_in is not None:
            task.append(tasks_in[j])
    if not seqs:
        raise InputError("no usable examples after tokenisation (all empty, or prompts longer than max_len)")
    return TokenData(seqs, n_prompt, task)


def record_texts(df: pl.DataFrame, spec: DataSpec, tokenizer: Any = None) -> tuple[list[str], list[str]]:
    """(prompt part, full text) of each usable row: ``template`` over prompt/response (rows lacking either are
    left out; ``template: chat`` renders the prompt with ``tokenizer``'s chat template), or ``text_field``
    (prompt parts empty)."""
    import polars as pl  # lazily: a KD run from a cache or TokenData never needs it

    if spec.prompt_field:
        for f in (spec.prompt_field, spec.response_field):
            if f not in df.columns:
                raise ConfigError(f"data: field '{f}' not in the data (columns: {df.columns})")
        df = df.filter(pl.col(spec.prompt_field).is_not_null() & pl.col(spec.response_field).is_not_null())
        p_txt = df[spec.prompt_field].cast(pl.Utf8).to_list()
        r_txt = df[spec.response_field].cast(pl.Utf8).to_list()
        if spec.template == CHAT:
            if tokenizer is None:
                raise ConfigError("data.template 'chat' needs the tokenizer whose chat template it is")
            prompts = [chat_prompt(tokenizer, p) for p in p_txt]
            return prompts, [p + r for p, r in zip(prompts, r_txt, strict=True)]
        pre, _, _ = spec.template.partition("{response}")
        prompts = [pre.format(prompt=p) for p in p_txt]
        return prompts, [spec.template.format(prompt=p, response=r) for p, r in zip(p_txt, r_txt, strict=True)]
    if spec.text_field not in df.columns:
        raise ConfigError(f"data: field '{spec.text_field}' not in the data (columns: {df.columns}); "
                          "set data.text_field, or prompt_field + response_field")
    texts = df.filter(pl.col(spec.text_field).is_not_null())[spec.text_field].cast(pl.Utf8).to_list()
    return ["" for _ in texts], texts


def chat_prompt(tokenizer: Any, prompt: str) -> str:
    """``prompt`` as one user turn in the tokenizer's chat template, up to the assistant's opening
    (``add_generation_prompt``): the text an instruct teacher answers after. SmolLM2-Instruct's template adds
    its default system turn; its EOS ``<|im_end|>`` is the token that ends the assistant turn."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("data.template 'chat': the tokenizer has no chat template; give a format string")
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


def rationale_frame(df: pl.DataFrame, spec: DataSpec) -> pl.DataFrame:
    """Distilling step by step (Hsieh et al. 2023, Sec. 3.2): per row, ``[label] question -> label`` and
    ``[rationale] question -> rationale`` (task prefixes of ``curate.distill.losses``), label task first.

    Rows lacking the question, label or rationale are left out (rationale-less rows keep the label task)."""
    import polars as pl  # lazily: a KD run from a cache or TokenData never needs it

    from curate.distill.losses import LABEL_PREFIX, RATIONALE_PREFIX

    for f in (spec.question_field, spec.label_field, spec.rationale_field):
        if f not in df.columns:
            raise ConfigError(f"data: rationale mode needs column '{f}' (columns: {df.columns})")
    q = pl.col(spec.question_field).cast(pl.Utf8)
    base = df.with_row_index("__row").filter(q.is_not_null())
    lab = base.filter(pl.col(spec.label_field).is_not_null()).select(
        "__row", (pl.lit(LABEL_PREFIX) + q).alias("__prompt"),
        pl.col(spec.label_field).cast(pl.Utf8).alias("__response"), pl.lit(TASK_LABEL).alias("__task"))
    rat = base.filter(pl.col(spec.rationale_field).is_not_null()).select(
        "__row", (pl.lit(RATIONALE_PREFIX) + q).alias("__prompt"),
        pl.col(spec.rationale_field).cast(pl.Utf8).alias("__response"), pl.lit(TASK_RATIONALE).alias("__task"))
    return pl.concat([lab, rat]).sort("__row", "__task").drop("__row")


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def load_data(spec: DataSpec, tokenizer: Any, seed: int) -> tuple[TokenData, TokenData]:
    """Train and held-out :class:`TokenData` per the spec (split is a seeded shuffle of the rows)."""
    return split_data(spec, seed, lambda df: tokenize_records(df, tokenizer, spec))


def split_data(spec: DataSpec, seed: int, tokenize: Callable[[pl.DataFrame], TokenData]) -> tuple[TokenData, TokenData]:
    """Train and held-out data of ``tokenize`` over the spec's files (the held-out split is a seeded shuffle)."""
    import torch

    df = read_records(spec.train)
    if spec.max_examples is not None:
        df = df.head(spec.max_examples)
    data = tokenize(df)
    if spec.eval:
        ev = tokenize(read_records(spec.eval))
        tr = data
    else:
        g = torch.Generator().manual_seed(seed + 7919)
        perm = torch.randperm(len(data), generator=g).tolist()
        n_eval = int(round(len(data) * spec.eval_fraction))
        if spec.eval_max_examples is not None:
            n_eval = min(n_eval, spec.eval_max_examples)
        ev, tr = data.subset(sorted(perm[:n_eval])), data.subset(sorted(perm[n_eval:]))
    if spec.eval_max_examples is not None and len(ev) > spec.eval_max_examples:
        ev = ev.subset(range(spec.eval_max_examples))
    if len(tr) == 0:
        raise InputError("no training examples left after the held-out split")
    return tr, ev
