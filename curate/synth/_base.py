"""What every generator step shares: teacher + sampling parameters, provenance columns, templates.

Generated rows carry ``generator`` (the step's YAML name), ``teacher`` (16-hex fingerprint id of the
teacher's weights/config/tokenizer, or of the server spec), ``prompt_id`` (sha256 of the exact prompt)
and ``gen_params`` (JSON: max_new_tokens, temperature, top_p, seed), so a row can be traced to the call
that produced it (and found in the call cache).
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any, ClassVar

import polars as pl
from pydantic import Field

from curate.core.errors import ConfigError
from curate.core.operator import Column, OpParams, RunContext
from curate.synth._teach import (
    SamplingParams,
    Teacher,
    TeacherParams,
    gen_params_json,
    get_teacher,
    prompt_id,
)

PROVENANCE = ("generator", "teacher", "prompt_id", "gen_params")


def provenance_columns(prefix: dict[str, str] | None = None) -> dict[str, Column]:
    """The provenance columns a generator adds (renamed by ``prefix``, as the judge's ``judge_*``)."""
    docs = {
        "generator": Column(pl.String, "registry name of the generator that wrote the row",
                            "null on rows the generator did not write"),
        "teacher": Column(pl.String, "fingerprint id of the teacher (backend, weights, tokenizer)",
                          "null on rows the generator did not write"),
        "prompt_id": Column(pl.String, "hash of the exact prompt sent to the teacher", "null when nothing was asked"),
        "gen_params": Column(pl.String, "JSON of the sampling parameters and the row's seed",
                             "null when nothing was asked"),
    }
    return {(prefix or {}).get(k, k): v for k, v in docs.items()}


class GenParams(OpParams):
    """Parameters every generator step has: who answers and how it samples."""

    teacher: TeacherParams = Field(default_factory=TeacherParams, description="the teacher model or server")
    sampling: SamplingParams = Field(default_factory=SamplingParams, description="decoding settings")


def template_fields(template: str) -> list[str]:
    """The ``{name}`` fields of a str.format template (``{{`` escapes ignored)."""
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def check_template(template: str, allowed: set[str] | None = None, where: str = "template") -> list[str]:
    try:
        fields = template_fields(template)
    except ValueError as e:
        raise ConfigError(f"{where}: invalid template: {e}") from None
    if allowed is not None:
        bad = [f for f in fields if f not in allowed]
        if bad:
            raise ConfigError(f"{where}: unknown fields {bad} (allowed: {sorted(allowed)})")
    return fields


def fill(template: str, batch: pl.DataFrame, extra: dict[str, list[str]] | None = None) -> tuple[list[str | None], list[str]]:
    """Format ``template`` per row over the batch's columns; rows with a null field give None.

    Returns (prompts, missing columns)."""
    fields = template_fields(template)
    extra = extra or {}
    missing = [f for f in fields if f not in batch.columns and f not in extra]
    if missing:
        return [None] * batch.height, missing
    cols = {f: (extra[f] if f in extra else batch.get_column(f).cast(pl.String, strict=False).to_list())
            for f in dict.fromkeys(fields)}
    out: list[str | None] = []
    for i in range(batch.height):
        vals = {f: cols[f][i] for f in cols}
        out.append(None if any(v is None for v in vals.values()) else template.format(**vals))
    return out, []


class GeneratorMixin:
    """Teacher loading in ``setup`` and provenance columns; mixed into Filter/GlobalStage generators."""

    params: Any
    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ("torch", "transformers")
    extra: ClassVar[str] = "distill"

    teacher: Teacher | None = None
    seed: int = 0

    def setup_teacher(self, ctx: RunContext) -> Teacher:
        p = self.params
        self.seed = p.sampling.seed if p.sampling.seed is not None else ctx.seed
        self.teacher = get_teacher(p.teacher, Path(ctx.work_dir))
        return self.teacher

    def ask(self, prompts: list[str], sampling: SamplingParams | None = None, salt: int = 0) -> list[str]:
        assert self.teacher is not None, "setup() loads the teacher"
        return self.teacher.generate(prompts, sampling or self.params.sampling, self.seed + salt)

    def provenance(self, prompts: list[str | None], sampling: SamplingParams | None = None,
                   salt: int = 0, seeds: list[int | None] | None = None) -> dict[str, pl.Series]:
        """Provenance columns; ``seeds`` gives each row's sampling seed when it is not salt + position."""
        assert self.teacher is not None
        s = sampling or self.params.sampling
        n = len(prompts)
        # the i-th prompt actually asked was sampled with seed + salt + i (Teacher.generate)
        pos = 0
        gp: list[str | None] = []
        for k, q in enumerate(prompts):
            seed = seeds[k] if seeds is not None else self.seed + salt + pos
            gp.append(gen_params_json(s, seed) if q is not None and seed is not None else None)
            pos += q is not None
        return {
            "generator": pl.Series("generator", [self.name] * n, dtype=pl.String),
            "teacher": pl.Series("teacher", [self.teacher.id] * n, dtype=pl.String),
            "prompt_id": pl.Series("prompt_id", [prompt_id(p) if p is not None else None for p in prompts],
                                   dtype=pl.String),
            "gen_params": pl.Series("gen_params", gp, dtype=pl.String),
        }


def row_seed(base: int, key: str) -> int:
    """A per-row seed from the run seed and a stable row key (batching does not change choices)."""
    import hashlib

    return (base * 1_000_003 + int(hashlib.sha256(key.encode()).hexdigest()[:12], 16)) % (2**31 - 1)
