import polars as pl
import pytest

from curate.core.operator import UID
from curate.selectors.base import SelectParams, select


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
