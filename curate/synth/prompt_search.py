"""``ape``: automatic prompt engineering -- propose instructions with the teacher, keep the best on a dev set.

Zhou et al. 2023, "Large Language Models Are Human-Level Prompt Engineers" (ICLR), Sec. 3: the LLM sees
a few input/output demonstrations and completes "The instruction was" (forward-mode generation,
Sec. 3.1); each proposal is scored by execution accuracy on held-out examples (Sec. 3.2) and the best
is kept. Defaults follow the released APE configuration: 5 demonstration subsets of 5 pairs, 10
proposals each (50 candidates), proposals sampled at temperature 0.9; the evaluation here decodes
greedily and compares the extracted final answer with the label (exact match after number
normalisation, :mod:`curate.metrics.answers`). Same data, seed and teacher give the same winner.

The winner is written to ``<state>/ape.json`` (every candidate with its score) and added to every row as
``output_column``, so a later step can use it (e.g. ``rationale`` with ``template: "{best_instruction}..."``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import polars as pl
from pydantic import Field

from curate.core.errors import ConfigError
from curate.core.operator import UID, Column, FitContext, GlobalStage, RunContext
from curate.core.registry import register
from curate.metrics.answers import answers_match, extract_answer, gsm8k_label, normalize_number
from curate.synth._base import GeneratorMixin, GenParams
from curate.synth._teach import SamplingParams

PROPOSE = ("I gave a friend an instruction and {n} inputs. The friend read the instruction and wrote an output "
           "for every one of the inputs. Here are the input-output pairs:\n\n{demos}\n\nThe instruction was")


def clean_candidate(text: str) -> str:
    """First non-empty line of a proposal, without wrapping quotes or a leading colon."""
    for line in text.strip().splitlines():
        line = line.strip().strip(":").strip().strip('"').strip("'").strip()
        if line:
            return line
    return ""


@register("ape")
class APE(GeneratorMixin, GlobalStage):
    """Search an instruction that maximises dev-set answer accuracy; add it to every row (APE)."""

    class Params(GenParams):
        sampling: SamplingParams = Field(
            default_factory=lambda: SamplingParams(max_new_tokens=64, temperature=0.9, top_p=1.0),
            description="proposal sampling (APE config: temperature 0.9)")
        eval_sampling: SamplingParams = Field(
            default_factory=lambda: SamplingParams(max_new_tokens=256, temperature=0.0),
            description="answering the dev questions (greedy)")
        label_column: str = Field("answer", description="gold answer column")
        label_format: str = Field("gsm8k", description="gsm8k ('#### n') or plain")
        demo_output_column: str | None = Field(None, description="demonstration outputs (default: label_column)")
        num_subsamples: int = Field(5, gt=0, description="demonstration subsets (APE config: 5)")
        num_demos: int = Field(5, gt=0, description="pairs per subset (APE config: 5)")
        prompts_per_subsample: int = Field(10, gt=0, description="proposals per subset (APE config: 10)")
        dev_size: int = Field(50, gt=0, description="rows scoring each candidate (APE config: 50)")
        initial_instructions: list[str] = Field(default_factory=list, description="hand-written candidates "
                                                                                   "scored alongside")
        eval_template: str = Field("{instruction}\n\nQuestion: {input}",
                                   description="how a candidate instruction meets a dev question")
        output_column: str = Field("best_instruction", description="column receiving the winner")

    def needs(self) -> list[str]:
        return [self.params.label_column]

    def adds(self) -> dict[str, Column]:
        return {self.params.output_column: Column(pl.String, "the instruction that scored best on the dev set",
                                                  "null when no candidate was scored")}

    def fit(self, ctx: FitContext) -> None:
        p = self.params
        frames = list(ctx.iter_batches())
        if not frames:
            raise ConfigError("ape: no input rows")
        df = pl.concat(frames, how="diagonal_relaxed").sort(UID)
        if p.label_column not in df.columns:
            raise ConfigError(f"ape: label column '{p.label_column}' not in the data ({df.columns})")
        self.setup_teacher(ctx)
        rng = random.Random(self.seed)
        qs = df.get_column("text").to_list()
        raw = df.get_column(p.label_column).cast(pl.String, strict=False).to_list()
        outs = df.get_column(p.demo_output_column or p.label_column).cast(pl.String, strict=False).to_list()
        gold = [gsm8k_label(x) if p.label_format == "gsm8k" else normalize_number(x) if x else None for x in raw]
        order = list(range(len(qs)))
        rng.shuffle(order)
        dev = order[:p.dev_size]
        pool = order[p.dev_size:] or dev  # demonstrations come from outside the dev set when there is data
        proposals: list[str] = []
        for s in range(p.num_subsamples):
            demo = rng.sample(pool, min(p.num_demos, len(pool)))
            text = "\n\n".join(f"Input: {qs[i]}\nOutput: {outs[i]}" for i in demo)
            prompt = PROPOSE.format(n=len(demo), demos=text)
            proposals += self.ask([prompt] * p.prompts_per_subsample, salt=1000 * s)
        cands = list(dict.fromkeys([*p.initial_instructions, *(c for c in map(clean_candidate, proposals) if c)]))
        scored = []
        for ci, c in enumerate(cands):
            prompts = [p.eval_template.format(instruction=c, input=qs[i]) for i in dev]
            answers = self.ask(prompts, p.eval_sampling, salt=0)
            hits = [answers_match(extract_answer(a)[0], gold[i]) for a, i in zip(answers, dev)]
            scored.append({"instruction": c, "accuracy": sum(hits) / max(len(dev), 1), "index": ci})
            ctx.progress(ci + 1, len(cands), unit="candidates")
        ctx.stat("candidates", len(cands))
        scored.sort(key=lambda d: (-d["accuracy"], d["index"]))  # ties: the earlier candidate (stable)
        best = scored[0]["instruction"] if scored else ""
        assert self.teacher is not None
        state = Path(ctx.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        (state / "ape.json").write_text(json.dumps({"best": best, "candidates": scored, "dev_size": len(dev),
                                                    "teacher": self.teacher.id, "seed": self.seed}, indent=1))

    def setup(self, ctx: RunContext) -> None:
        f = Path(ctx.state_dir) / "ape.json"
        self.best = json.loads(f.read_text())["best"] if f.exists() else None

    def apply(self, batch: pl.DataFrame) -> pl.DataFrame:
        return batch.with_columns(pl.lit(self.best, dtype=pl.String).alias(self.params.output_column))
