"""Runs one operator over one batch: rules, kept/rejected split, reasons, counts and timing.

This is the plumbing every filter shares, so an operator author writes only ``score`` and ``rules``.
"""

from __future__ import annotations

import time

import polars as pl

from curate.core.operator import Operator, Rule
from curate.core.stats import StepStats

REASON, SCORE, THRESHOLD = "reason", "score", "threshold"
_DROP = "__drop"


def _text_bytes(batch: pl.DataFrame) -> int:
    if "text" not in batch.columns or batch.height == 0:
        return 0
    return int(batch.get_column("text").str.len_bytes().sum() or 0)


def _first_match(rules: list[Rule], value: pl.Expr | None, attr: str) -> pl.Expr:
    """when(rule1 drops) then <rule1's value> when(rule2 drops) ... : the first rule that fired wins."""
    expr: pl.Expr | None = None
    for r in rules:
        if attr == "reason":
            v = pl.lit(r.reason)
        elif attr == "score":
            v = r.score_expr()
        else:
            v = pl.lit(None if isinstance(r.threshold, str) else r.threshold, dtype=pl.Float64)
        expr = pl.when(r.drops()).then(v) if expr is None else expr.when(r.drops()).then(v)
    assert expr is not None
    return expr.otherwise(None)


#: the rule expressions of a rule list, built once per process (a polars expression is immutable and
#: reusable; building them was about a tenth of the rule filters' CPU on small batches)
_EXPRS: dict[tuple[Rule, ...], tuple[pl.Expr, pl.Expr, pl.Expr, pl.Expr]] = {}


def _rule_exprs(rules: list[Rule]) -> tuple[pl.Expr, pl.Expr, pl.Expr, pl.Expr]:
    """(drops, reason, score, threshold) expressions of ``rules``, cached by the rules' values."""
    key = tuple(rules)
    try:
        hit = _EXPRS.get(key)
    except TypeError:  # a rule with an unhashable threshold: build each time
        hit, key = None, None
    if hit is None:
        hit = (pl.any_horizontal([r.drops() for r in rules]), _first_match(rules, None, "reason"),
               _first_match(rules, None, "score"), _first_match(rules, None, "threshold"))
        if key is not None and len(_EXPRS) < 1024:
            _EXPRS[key] = hit
    return hit


def run_step(op: Operator, batch: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame | None, StepStats]:
    """Apply ``op`` to ``batch``. Returns (kept rows, rejected rows with reason/score/threshold, stats)."""
    t0 = time.perf_counter()
    stats = StepStats(op.step_name, docs_in=batch.height, bytes_in=_text_bytes(batch))
    out = op.process(batch)
    rules = op.rules()
    rejected: pl.DataFrame | None = None
    if rules and out.height:
        drops, reason, score, threshold = _rule_exprs(rules)
        out = out.with_columns(drops.alias(_DROP))
        rej = out.filter(pl.col(_DROP))
        out = out.filter(~pl.col(_DROP)).drop(_DROP)
        if rej.height:
            rejected = rej.drop(_DROP).with_columns(
                reason.alias(REASON), score.alias(SCORE), threshold.alias(THRESHOLD),
                pl.lit(op.step_name).alias("step"),
            )
            lead = ["id", "step", REASON, SCORE, THRESHOLD]
            rejected = rejected.select(lead + [c for c in rejected.columns if c not in lead])
            counts = rejected.group_by(REASON).len()
            stats.dropped = {str(k): int(v) for k, v in counts.iter_rows()}
    out = op.finish(out)
    stats.docs_out = out.height
    stats.bytes_out = _text_bytes(out)
    stats.seconds = time.perf_counter() - t0
    return out, rejected, stats
