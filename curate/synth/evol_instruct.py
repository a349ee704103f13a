"""``evol_instruct``: rewrite instructions into harder (in-depth) or new (in-breadth) ones (WizardLM).

Xu et al. 2024, "WizardLM: Empowering Large Language Models to Follow Complex Instructions" (ICLR),
Sec. 3.1-3.3. In-depth evolving has five operations -- add constraints, deepening, concretizing,
increased reasoning steps, complicate input -- whose prompts ask for a rewrite that adds only 10-20
words and never mentions the prompt labels; in-breadth evolving asks for a new, rarer instruction in
the same domain. One operation is drawn uniformly per instruction and round; the paper runs M=4 rounds
(gpt-3.5-turbo, temperature 1, top_p 0.95 in the released ``Evol_Instruct`` script) and answers every
evolved instruction. Elimination evolving (Sec. 3.3) drops an evolution when

1. it brings no information gain over its parent (``no_information_gain``: identical after
   normalisation, or -- with ``equality_check`` -- the teacher says the two are equal, as the paper asks
   ChatGPT),
2. the answer is a refusal: contains "sorry" and is shorter than 80 words (``sorry_short``),
3. the answer is only punctuation and stop words (``stopwords_only``),
4. the evolved instruction copies words of the evolving prompt: "#Rewritten Prompt#", "given prompt",
   "rewritten prompt", "created prompt" (``copies_prompt``); an empty rewrite counts as ``empty``.

A row whose first round is eliminated is dropped with that reason; a later failure stops the row's
evolution and keeps its last successful one (the paper returns failures to the pool for the next round).
The operation prompts below are curate's wording of the paper's descriptions.
"""

from __future__ import annotations

import json
import random
import re

import polars as pl
from pydantic import Field

from curate.core.operator import Column, Filter, Rule, RunContext
from curate.core.registry import register
from curate.synth._base import GeneratorMixin, GenParams, provenance_columns, row_seed
from curate.synth._teach import SamplingParams

_DEPTH = ("I want you to act as a Prompt Rewriter. Rewrite the given prompt into a more complex version that "
          "famous AI systems find a bit harder to handle, while it stays reasonable and answerable by humans. "
          "Keep any table, code or input of the given prompt. {method} The rewritten prompt may add only 10 "
          "to 20 words. Do not use the words 'given prompt' or 'rewritten prompt' in it.\n\n"
          "#Given Prompt#:\n{prompt}\n\n#Rewritten Prompt#:\n")
_BREADTH = ("I want you to act as a Prompt Creator. Draw inspiration from the given prompt to create a brand "
            "new prompt in the same domain but rarer, of similar length and difficulty, answerable by humans. "
            "Do not use the words 'given prompt' or 'created prompt' in it.\n\n"
            "#Given Prompt#:\n{prompt}\n\n#Created Prompt#:\n")
METHODS: dict[str, str] = {
    "constraints": "Add one more constraint or requirement to the prompt.",
    "deepening": "If the prompt asks about certain issues, increase the depth and breadth of the inquiry.",
    "concretizing": "Replace general concepts with more specific concepts.",
    "reasoning": "If the prompt can be solved with a few simple thinking steps, rewrite it to explicitly "
                 "request multi-step reasoning.",
    "complicate_input": "Add a complex input to the prompt (data in a table, JSON, code or a formula) that the "
                        "answer must use.",
}
MUTATIONS = (*METHODS, "breadth")
_EQUAL = ("Here are two instructions. Do you think they are equal to each other, i.e. they have the same "
          "constraints and requirements and the same depth and breadth of the inquiry?\n"
          "First instruction: {a}\nSecond instruction: {b}\nAnswer with 'Equal' or 'Not Equal'.")
_COPIED = ("#rewritten prompt#", "#created prompt#", "#given prompt#", "given prompt", "rewritten prompt",
           "created prompt")
_STOP = frozenset("a an the and or but if of to in on at by for with as is are was were be been it this that "
                  "these those i you he she we they me my your our their so not no yes do does did".split())
_LABEL = re.compile(r"^\s*(?:#?\s*(?:rewritten|created)\s+prompt\s*#?\s*:)\s*", re.IGNORECASE)


def evolve_prompt(mutation: str, prompt: str) -> str:
    if mutation == "breadth":
        return _BREADTH.format(prompt=prompt)
    return _DEPTH.format(method=METHODS[mutation], prompt=prompt)


def _norm(s: str) -> str:
    return re.sub(r"\W+", " ", s.lower()).strip()


def eliminate(parent: str, evolved: str, answer: str | None) -> str | None:
    """The paper's rule-based elimination reasons (Sec. 3.3) for one evolution (None: it survives)."""
    if not evolved.strip():
        return "empty"
    low = evolved.lower()
    if any(w in low for w in _COPIED):
        return "copies_prompt"
    if _norm(evolved) == _norm(parent):
        return "no_information_gain"
    if answer is not None:
        words = answer.split()
        if "sorry" in answer.lower() and len(words) < 80:
            return "sorry_short"
        toks = re.findall(r"\w+", answer.lower())
        if all(t in _STOP for t in toks):
            return "stopwords_only"
    return None


@register("evol_instruct")
class EvolInstruct(GeneratorMixin, Filter):
    """Evolve each row's instruction (``text``) for ``rounds`` rounds and answer it; eliminate failures.

    ``text`` becomes the evolved instruction; adds ``instruction_original``, ``response`` (the answer),
    ``evol_mutations`` (JSON list of the operations applied), ``evol_rounds`` (successful rounds),
    ``evol_stopped`` (elimination reason that stopped a later round, else null) and provenance.
    Drops rows whose first evolution is eliminated, with the rule's reason."""

    class Params(GenParams):
        sampling: SamplingParams = Field(
            default_factory=lambda: SamplingParams(max_new_tokens=2048, temperature=1.0, top_p=0.95),
            description="released script: temperature 1, top_p 0.95, max 2048 tokens")
        rounds: int = Field(4, gt=0, description="evolution rounds (paper: M = 4)")
        mutations: list[str] = Field(default_factory=lambda: list(MUTATIONS),
                                     description="operations drawn uniformly: constraints, deepening, concretizing, "
                                                 "reasoning, complicate_input (in-depth), breadth (in-breadth)")
        generate_answers: bool = Field(True, description="answer each evolution (needed by rules 2-3)")
        equality_check: bool = Field(True, description="ask the teacher whether parent and evolution are equal "
                                                       "(paper's rule 1)")

    rewrites_text = True

    def setup(self, ctx: RunContext) -> None:
        bad = [m for m in self.params.mutations if m not in MUTATIONS]
        if bad or not self.params.mutations:
            from curate.core.errors import ConfigError

            raise ConfigError(f"evol_instruct.mutations: unknown {bad} (choose from {list(MUTATIONS)})")
        self.setup_teacher(ctx)

    def adds(self) -> dict[str, Column]:
        return {"instruction_original": Column(pl.String, "the instruction before evolution"),
                "response": Column(pl.String, "the teacher's answer to the evolved instruction",
                                   "null when answers are not generated"),
                "evol_mutations": Column(pl.String, "JSON list of the mutations applied, in order"),
                "evol_rounds": Column(pl.Int32, "mutations that survived the elimination rules"),
                "evol_stopped": Column(pl.String, "the elimination rule that stopped evolution",
                                       "null when every round survived"),
                **provenance_columns()}

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        p = self.params
        n = batch.height
        ids = batch.get_column("id").cast(pl.String).to_list() if "id" in batch.columns else [str(i) for i in range(n)]
        cur = batch.get_column("text").to_list()
        original = list(cur)
        answers: list[str | None] = [None] * n
        history: list[list[str]] = [[] for _ in range(n)]
        first_fail: list[str | None] = [None] * n
        stopped: list[str | None] = [None] * n
        last_prompt: list[str | None] = [None] * n
        last_seed: list[int | None] = [None] * n
        active = list(range(n))
        salt0 = int(batch.get_column("__uid").min() or 0) if "__uid" in batch.columns and n else 0
        short = SamplingParams(max_new_tokens=8, temperature=0.0, top_p=1.0)
        for r in range(p.rounds):
            if not active:
                break
            muts = [random.Random(row_seed(self.seed, f"{ids[i]}:{r}")).choice(p.mutations) for i in active]
            prompts = [evolve_prompt(m, cur[i]) for m, i in zip(muts, active)]
            evolved = [_LABEL.sub("", e).strip() for e in self.ask(prompts, salt=salt0 + 7919 * r)]
            ans: list[str | None] = [None] * len(active)
            if p.generate_answers:
                ans = [a.strip() for a in self.ask(evolved, salt=salt0 + 7919 * r + 1)]
            why = [eliminate(cur[i], e, a) for i, e, a in zip(active, evolved, ans)]
            if p.equality_check:
                ask_idx = [j for j, w in enumerate(why) if w is None]
                eq = self.ask([_EQUAL.format(a=cur[active[j]], b=evolved[j]) for j in ask_idx], short,
                              salt=salt0 + 7919 * r + 2)
                for j, verdict in zip(ask_idx, eq):
                    v = verdict.strip().lower()
                    if v.startswith("equal") or (" equal" in v and "not equal" not in v):
                        why[j] = "no_information_gain"
            still = []
            for j, i in enumerate(active):
                if why[j] is None:
                    cur[i], answers[i] = evolved[j], ans[j]
                    history[i].append(muts[j])
                    last_prompt[i] = prompts[j]
                    last_seed[i] = self.seed + salt0 + 7919 * r + j  # the rewrite's seed (Teacher.generate)
                    still.append(i)
                elif r == 0:
                    first_fail[i] = why[j]
                else:
                    stopped[i] = why[j]
            active = still
        out = batch.with_columns(
            pl.Series("text", cur, dtype=pl.String),
            pl.Series("instruction_original", original, dtype=pl.String),
            pl.Series("response", answers, dtype=pl.String),
            pl.Series("evol_mutations", [json.dumps(h) for h in history], dtype=pl.String),
            pl.Series("evol_rounds", [len(h) for h in history], dtype=pl.Int32),
            pl.Series("evol_stopped", stopped, dtype=pl.String),
            pl.Series("__evol_fail", first_fail, dtype=pl.String),
            **self.provenance(last_prompt, seeds=last_seed),
        )
        return out.with_columns([(pl.col("__evol_fail") == w).fill_null(False).alias(f"__evol_{w}")
                                 for w in _REASONS])

    def rules(self) -> list[Rule]:
        return [Rule(w, f"__evol_{w}", "is_true") for w in _REASONS]

    def finish(self, kept: pl.DataFrame) -> pl.DataFrame:
        return kept.drop("__evol_fail", *[f"__evol_{w}" for w in _REASONS])


_REASONS = ("empty", "copies_prompt", "no_information_gain", "sorry_short", "stopwords_only")
