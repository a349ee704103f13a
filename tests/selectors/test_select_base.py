import numpy as np
import polars as pl
import pytest

from curate.core.operator import UID, FitContext
from curate.selectors.base import Selector, SelectParams, select


def _scores(vals):
    return pl.DataFrame({UID: list(range(len(vals))), "score": vals}, schema={UID: pl.UInt64, "score": pl.Float64})


def test_top_k_ties_broken_by_input_order():
    keep, cut = select(_scores([1.0, 3.0, 3.0, 2.0, 3.0]), SelectParams(top_k=2), True)
    assert keep.to_list() == [False, True, True, False, False]
    assert cut == 3.0


def test_fraction_and_direction():
    keep, cut = select(_scores([5.0, 1.0, 4.0, 2.0]), SelectParams(fraction=0.5), False)
    assert keep.to_list() == [False, True, False, True]
    assert cut == 2.0


def test_threshold_and_nan_never_selected():
    keep, _ = select(_scores([0.5, float("nan"), 0.9]), SelectParams(threshold=0.6), True)
    assert keep.to_list() == [False, False, True]


def test_token_budget():
    s = _scores([3.0, 2.0, 1.0]).with_columns(tokens=pl.Series([5, 5, 5]))
    keep, _ = select(s, SelectParams(budget_tokens=10), True)
    assert keep.to_list() == [True, True, False]


def test_only_one_mode():
    with pytest.raises(ValueError):
        SelectParams(top_k=3, fraction=0.5)


def test_nan_scores_with_top_k_and_no_tokens_column():
    keep, _ = select(_scores([float("nan"), 2.0, 1.0]), SelectParams(budget_tokens=1), True)
    assert keep.to_list() == [False, True, False]


def test_selector_with_token_budget_on_empty_input(tmp_path):
    import json

    from curate import Pipeline, read, read_output, write
    from curate.filters.length import LengthFilter
    from curate.selectors.coresets import KCenterCoreset

    f = tmp_path / "in.jsonl"
    f.write_text("".join(json.dumps({"text": f"short doc {i}"}) + "\n" for i in range(5)))
    res = Pipeline(read(str(f)), LengthFilter(min_words=100), KCenterCoreset(budget_tokens=10),
                   write(str(tmp_path / "o"))).run(work_dir=str(tmp_path / "w"), workers=1, progress=False)
    assert res.docs_out == 0 and read_output(tmp_path / "o").height == 0


class _FileScores(Selector):
    """A selector whose scores are given per-shard files (what a ``map_shards`` scorer returns)."""

    files: list = []

    class Params(SelectParams):
        pass

    def compute_scores(self, ctx):
        return self.files


@pytest.mark.parametrize("hib", [True, False])
def test_selection_from_score_files_equals_select_on_the_frame(tmp_path, hib):
    """Scores in per-shard files (many ties, NaN, nulls): the rule the base class derives from the files
    (threshold, or the k-th best row from global_ops.top_k) selects the rows ``select`` picks on the
    concatenated frame, and records the same cut-off, for top_k, fraction, threshold and keep-all."""
    rng = np.random.default_rng(4)
    n = 900
    score = rng.integers(0, 30, n).astype(np.float64)
    score[rng.choice(n, 60, replace=False)] = np.nan
    uid = rng.permutation(n).astype(np.uint64)
    frame = pl.DataFrame({UID: uid, "score": score}).with_columns(
        pl.when(pl.col(UID) % 13 == 0).then(None).otherwise(pl.col("score")).alias("score"))
    files = []
    for i in range(3):
        f = tmp_path / f"s{i}.parquet"
        frame.slice(i * 300, 300).write_parquet(f)
        files.append(f)
    cases = [dict(top_k=50), dict(top_k=n - 5), dict(top_k=n + 10), dict(fraction=0.3), dict(fraction=0.0004),
             dict(threshold=12.0), {}]
    for i, kw in enumerate(cases):
        op = _FileScores(higher_is_better=hib, **kw)
        op.files = files
        ctx = FitContext(work_dir=tmp_path, state_dir=tmp_path / f"st{i}", scratch_dir=tmp_path)
        ctx.state_dir.mkdir()
        op.fit(ctx)
        op.setup(ctx)
        got = op._state.sort(UID)
        want, cut = select(frame, SelectParams(**kw), hib)
        ref = frame.with_columns(want).sort(UID)
        assert got["__selected"].to_list() == ref["__selected"].to_list(), kw
        assert (ctx.state_dir / "cutoff.txt").read_text() == ("" if cut is None else repr(cut)), kw
        assert got["score"].equals(ref["score"])
        assert list((ctx.state_dir / "scores").glob("part-*.parquet"))  # the state is per-shard files
    assert ref["__selected"].sum() > 0


def test_refit_in_another_mode_replaces_the_state(tmp_path):
    """A fit from files, then one from a frame in the same state dir (and back): setup reads the latest."""
    f = tmp_path / "s.parquet"
    frame = pl.DataFrame({UID: np.arange(20, dtype=np.uint64), "score": np.arange(20, dtype=np.float64)})
    frame.write_parquet(f)
    ctx = FitContext(work_dir=tmp_path, state_dir=tmp_path / "st", scratch_dir=tmp_path)
    ctx.state_dir.mkdir()
    for scores, k in (([f], 5), (frame, 3), ([f], 7)):
        op = _FileScores(top_k=k)
        op.files = scores
        op.fit(ctx)
        op.setup(ctx)
        assert op._state["__selected"].sum() == k
