"""``self_instruct``: bootstrap new instructions from seed tasks (Wang et al. 2023, "Self-Instruct", ACL).

Defaults are the paper's (Sec. 2.2 and the released ``bootstrap_instructions.py``): each request shows
8 in-context instructions -- 6 sampled human seed tasks and 2 sampled machine-generated ones (fewer
machine ones, filled with seeds, until the pool has them) -- under "Come up with a series of tasks:" and
asks the model to continue the numbered list; sampling temperature 0.7, top_p 0.5, at most 1024 tokens,
stop at a blank line. A candidate is kept (Sec. 2.3, "Filtering and postprocessing") when it

* has 4-150 words (``too_short``, ``too_long``),
* contains none of the keywords a language model cannot act on: image, graph, picture, file, map, draw,
  plot, go to, video, audio, music, flowchart, diagram (``blacklisted_keyword``),
* does not start with "Write a program" (``write_a_program``), punctuation (``starts_with_punctuation``)
  or a non-ASCII character (``non_english``),
* has ROUGE-L <= 0.7 against EVERY instruction kept so far, seeds included (``too_similar``).

The similarity check uses :class:`curate.synth._rouge.RougeIndex` (an exact token-overlap bound shortlists
rows, ROUGE-L runs on the shortlist) instead of the reference's brute force over the whole pool.
The paper's later stages (classification identification, instance generation) are other steps: e.g.
``prompt_template`` after this one writes a response per instruction.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import Field

from curate.core.operator import UID, Column, FitContext, GlobalStage, OpParams, Rule, RunContext
from curate.core.registry import register
from curate.synth._base import GeneratorMixin, GenParams, provenance_columns
from curate.synth._rouge import RougeIndex
from curate.synth._teach import SamplingParams, gen_params_json, prompt_id

BLACKLIST = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps", "draw",
             "plot", "go to", "video", "audio", "music", "flowchart", "diagram")
#: generated rows get UIDs above every input row's (inputs use shard << 40 | row, far below 2**62)
GEN_UID_BASE = 1 << 62
_ITEM = re.compile(r"\n\s*\d+\s?\.\s?")
_WS = re.compile(r"\s+")


def request_prompt(instructions: list[str]) -> str:
    """The paper's request: a numbered list of in-context tasks, ending with the next number."""
    body = "".join(f"{i + 1}. {_WS.sub(' ', t).strip()}\n" for i, t in enumerate(instructions))
    return f"Come up with a series of tasks:\n\n{body}{len(instructions) + 1}."


def parse_response(text: str, first_number: int, max_number: int = 16) -> tuple[list[str], bool]:
    """The instructions of a continuation (the first continues item ``first_number``), and whether the
    last one may be cut off (no blank-line stop seen: the reference drops ``finish_reason == length``)."""
    stopped = "\n\n" in text
    text = text.split("\n\n", 1)[0]
    parts = _ITEM.split("\n" + text.lstrip(" "))
    items = [re.sub(r"\s+", " ", p).strip() for p in parts]
    items = [p for p in items if p][: max(max_number - first_number, 1)]
    return items, not stopped


def reject_reason(inst: str, min_words: int, max_words: int, blacklist: tuple[str, ...]) -> str | None:
    """The first of the paper's rule filters that ``inst`` fails (None: passes; similarity is separate)."""
    n = len(inst.split())
    if n < min_words:
        return "too_short"
    if n > max_words:
        return "too_long"
    low = inst.lower()
    if any(re.search(rf"\b{re.escape(w)}\b", low) for w in blacklist):
        return "blacklisted_keyword"
    if low.startswith("write a program"):
        return "write_a_program"
    if not inst[0].isalnum() and not inst[0].isspace() and inst[0].isascii():
        return "starts_with_punctuation"
    if not inst[0].isascii():
        return "non_english"
    return None


@register("self_instruct")
class SelfInstruct(GeneratorMixin, GlobalStage):
    """Generate ``num_instructions`` new instructions from the rows' ``text`` (the seed tasks).

    Adds rows: ``text`` = the new instruction, ``is_seed`` = false, ``rouge_l_max`` (highest ROUGE-L to a
    kept instruction among the index's shortlist) and provenance; input rows get ``is_seed`` = true and are
    kept unless ``keep_seeds`` is false (then dropped as ``seed_task``). Rejected candidates, with their
    reason, go to ``<state>/candidates_rejected.parquet``; counts to ``<state>/self_instruct.json``."""

    class Params(GenParams):
        sampling: SamplingParams = Field(
            default_factory=lambda: SamplingParams(max_new_tokens=1024, temperature=0.7, top_p=0.5),
            description="paper: temperature 0.7, top_p 0.5, max 1024 tokens (Sec. 2.2 / released script)")
        num_instructions: int = Field(100, gt=0, description="new instructions to keep (paper: 52K)")
        num_prompt_instructions: int = Field(8, gt=0, description="in-context instructions per request (paper: 8)")
        num_machine_in_prompt: int = Field(2, ge=0, description="of which machine-generated (paper: 2)")
        request_batch_size: int = Field(5, gt=0, description="requests per round (reference script: 5)")
        max_requests: int | None = Field(None, description="stop after this many requests (default: "
                                                           "4 x num_instructions)")
        rouge_threshold: float = Field(0.7, gt=0, le=1, description="drop when ROUGE-L > this (paper: 0.7)")
        min_words: int = Field(4, gt=0, description="paper: more than 3 words")
        max_words: int = Field(150, gt=0, description="paper: at most 150 words")
        blacklist: list[str] = Field(default_factory=lambda: list(BLACKLIST), description="paper's keyword list")
        drop_truncated: bool = Field(True, description="drop the last item of a continuation that did not stop "
                                                       "(reference: finish_reason == 'length')")
        keep_seeds: bool = Field(True, description="keep the seed rows in the output")

    def __init__(self, params: OpParams | None = None, /, **kw: Any) -> None:
        super().__init__(params, **kw)
        t = self.params.teacher
        if "chat" not in t.model_fields_set:  # the paper continues a list with a plain LM, no chat turn
            self.params.teacher = t.model_copy(update={"chat": False})
        self._gen: pl.DataFrame | None = None

    # -------------------------------------------------------------------------------------------- fit
    def adds(self) -> dict[str, Column]:
        return {"is_seed": Column(pl.Boolean, "true for the seed tasks, false for generated instructions"),
                "rouge_l_max": Column(pl.Float64, "highest ROUGE-L of a new instruction to any kept one",
                                      "null on seed rows"),
                **provenance_columns()}

    def fit(self, ctx: FitContext) -> None:
        p = self.params
        frames = [b.select("text", UID) for b in ctx.iter_batches(["text", UID])]
        seeds_df = pl.concat(frames) if frames else pl.DataFrame({"text": [], UID: []},
                                                                 schema={"text": pl.String, UID: pl.UInt64})
        seeds_df = seeds_df.sort(UID)
        seeds = seeds_df.get_column("text").to_list()
        seed_uids = seeds_df.get_column(UID).to_list()
        self.setup_teacher(ctx)
        rng = random.Random(self.seed)
        index = RougeIndex(seeds)
        machine: list[dict] = []
        rejected: list[dict] = []
        reasons: Counter[str] = Counter()
        n_req, candidates = 0, 0
        max_requests = p.max_requests if p.max_requests is not None else 4 * p.num_instructions
        k_machine = p.num_machine_in_prompt
        while len(machine) < p.num_instructions and n_req < max_requests and seeds:
            prompts = []
            for _ in range(min(p.request_batch_size, max_requests - n_req)):
                shown = [m["text"] for m in rng.sample(machine, min(k_machine, len(machine)))]
                shown += rng.sample(seeds, min(p.num_prompt_instructions - len(shown), len(seeds)))
                rng.shuffle(shown)
                prompts.append(request_prompt(shown))
            outs = self.ask(prompts, salt=n_req)
            for r, (prompt, text) in enumerate(zip(prompts, outs, strict=True)):
                gp = gen_params_json(p.sampling, self.seed + n_req + r)  # Teacher.generate: seed + salt + i
                first = prompt.count("\n") - 1  # number of shown items + 1 is the item being continued
                items, maybe_cut = parse_response(text, first_number=first)
                for j, inst in enumerate(items):
                    candidates += 1
                    why = "truncated" if (p.drop_truncated and maybe_cut and j == len(items) - 1) else \
                        reject_reason(inst, p.min_words, p.max_words, tuple(p.blacklist))
                    score = 0.0
                    if why is None:
                        score, _ = index.max_score(inst, p.rouge_threshold)
                        if score > p.rouge_threshold:
                            why = "too_similar"
                    if why is not None:
                        reasons[why] += 1
                        rejected.append({"text": inst, "reason": why, "rouge_l_max": score,
                                         "prompt_id": prompt_id(prompt)})
                        continue
                    if len(machine) >= p.num_instructions:
                        break
                    index.add(inst)
                    machine.append({"text": inst, "rouge_l_max": score, "prompt_id": prompt_id(prompt),
                                    "gen_params": gp})
            n_req += len(prompts)
            ctx.progress(len(machine), p.num_instructions, unit="instructions")
        assert self.teacher is not None
        k = len(machine)
        gen = pl.DataFrame({
            "id": [f"self_instruct-{i}" for i in range(k)],
            "text": [m["text"] for m in machine],
            "is_seed": [False] * k,
            "rouge_l_max": [float(m["rouge_l_max"]) for m in machine],
            "generator": [self.name] * k,
            "teacher": [self.teacher.id] * k,
            "prompt_id": [m["prompt_id"] for m in machine],
            "gen_params": [m["gen_params"] for m in machine],
            UID: pl.Series([GEN_UID_BASE + i for i in range(k)], dtype=pl.UInt64),
            # each new row travels with one seed row's batch, round robin, so it is written exactly once
            "__anchor": pl.Series([seed_uids[i % len(seed_uids)] for i in range(k)] if seed_uids else [],
                                  dtype=pl.UInt64),
        }, schema_overrides={"rouge_l_max": pl.Float64})
        ctx.stat("requests", n_req)
        ctx.stat("candidates", candidates)
        ctx.stat("kept", k)
        for why, c in reasons.items():
            ctx.stat(f"rejected_{why}", c)
        ctx.stat("rouge_exact_comparisons", index.exact_comparisons)
        ctx.stat("teacher_calls", self.teacher.calls)
        state = Path(ctx.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        gen.write_parquet(state / "generated.parquet")
        pl.DataFrame(rejected, schema={"text": pl.String, "reason": pl.String, "rouge_l_max": pl.Float64,
                                       "prompt_id": pl.String}).write_parquet(state / "candidates_rejected.parquet")
        (state / "self_instruct.json").write_text(json.dumps({
            "seeds": len(seeds), "requests": n_req, "candidates": candidates, "kept": k,
            "rejected": dict(reasons), "rouge_exact_comparisons": index.exact_comparisons,
            "teacher": self.teacher.id, "teacher_calls": self.teacher.calls}, indent=1))

    # ------------------------------------------------------------------------------------------ apply
    def setup(self, ctx: RunContext) -> None:
        f = Path(ctx.state_dir) / "generated.parquet"
        self._gen = pl.read_parquet(f) if f.exists() else None

    def apply(self, batch: pl.DataFrame) -> pl.DataFrame:
        batch = batch.with_columns(pl.lit(True).alias("is_seed"))
        if self._gen is None or self._gen.height == 0 or batch.height == 0:
            return batch
        mine = self._gen.filter(pl.col("__anchor").is_in(batch.get_column(UID).implode()))
        if mine.height == 0:
            return batch
        return pl.concat([batch, mine.drop("__anchor")], how="diagonal_relaxed")

    def rules(self) -> list[Rule]:
        return [] if self.params.keep_seeds else [Rule("seed_task", "is_seed", "is_true")]
