"""Docs in structure: every registered operator describes every parameter and declares the columns it adds
(dtype and null meaning), and a real run of each cheap operator adds exactly the declared columns with the
declared dtypes."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import polars as pl
import pytest

from curate import Pipeline, read, write
from curate.cli import main as cli_main
from curate.core.operator import REJECT_COLUMNS, Column, Operator
from curate.core.registry import all_operators
from curate.io.writers import RejectsSpec

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "data" / "web_sample.jsonl.gz"


def _curate_operators() -> dict[str, type[Operator]]:
    # other tests register throw-away operators in the same process; only curate's own are checked here
    return {n: c for n, c in all_operators().items() if c.__module__.startswith("curate.")}


def test_registry_is_not_empty():
    assert len(_curate_operators()) >= 20


@pytest.mark.parametrize("name", sorted(_curate_operators()))
def test_every_parameter_has_a_description(name):
    cls = _curate_operators()[name]
    bare = [f for f, info in cls.Params.model_fields.items() if not (info.description or "").strip()]
    assert not bare, f"{name}: parameters without a description: {bare}"


#: areas whose operators must declare their columns (every area that registers operators)
_DECLARED_AREAS = ("curate.filters.", "curate.selectors.", "curate.metrics.", "curate.synth.")


@pytest.mark.parametrize("name", sorted(n for n, c in _curate_operators().items()
                                        if c.__module__.startswith(_DECLARED_AREAS)))
def test_every_operator_declares_its_columns(name):
    cls = _curate_operators()[name]
    assert cls.declares_adds(), f"{name} does not declare the columns it adds (override Operator.adds)"
    op = cls.for_docs()
    adds = op.adds()
    assert isinstance(op.needs(), list)
    for col, c in adds.items():
        assert isinstance(c, Column) and c.doc.strip() and c.null.strip(), (name, col)
        assert isinstance(c.dtype, (pl.DataType, type)), (name, col, c.dtype)
        assert col in (cls.__doc__ or ""), f"{name}: column {col} missing from the docstring"
        assert col not in REJECT_COLUMNS and not col.startswith("__"), (name, col)


def _corpus(tmp_path: Path, n: int = 120) -> Path:
    """Real web text (the bundled sample), with planted exact duplicates so the dedup stages reject rows,
    and a url field for the URL filter."""
    rows = [json.loads(line) for line in gzip.open(EXAMPLE, "rt")][:n]
    rows += [dict(rows[i], id=f"copy-{i}") for i in range(0, 20, 2)]
    for i, r in enumerate(rows):
        r["url"] = f"https://{'spam' if i % 7 == 0 else 'ok'}.example.com/page/{i}"
    f = tmp_path / "in.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


def _cheap_cases() -> list[tuple[str, list[Operator], Operator]]:
    from curate.filters.c4 import C4Quality, FineWebQuality
    from curate.filters.exact_dedup import ExactDedup
    from curate.filters.gopher import GopherQuality, GopherRepetition
    from curate.filters.keywords import RegexFilter
    from curate.filters.length import CharRatioFilter, LengthFilter
    from curate.filters.minhash import MinHashDedup
    from curate.filters.url import URLFilter
    from curate.selectors.coresets import FacilityLocation, KCenterCoreset
    from curate.selectors.perplexity import PerplexityBucket

    cases: list[tuple[str, list[Operator], Operator]] = [
        ("gopher_quality", [], GopherQuality()),
        ("gopher_repetition", [], GopherRepetition()),
        ("c4_quality", [], C4Quality()),
        ("fineweb_quality", [], FineWebQuality()),
        ("fineweb_quality/exclude_zero", [], FineWebQuality(line_punct_exclude_zero=True)),
        ("length_filter", [], LengthFilter(min_words=50)),
        ("char_ratio_filter", [], CharRatioFilter(max_digit_ratio=0.05)),
        ("regex_filter", [], RegexFilter(keywords=["the"], max_matches=5)),
        ("url_filter", [], URLFilter(blocked_domains=["spam.example.com"])),
        ("url_filter/no_lists", [], URLFilter()),
        ("exact_dedup", [], ExactDedup()),
        ("minhash_dedup", [], MinHashDedup()),
        ("perplexity_bucket", [LengthFilter()], PerplexityBucket(column="n_chars", keep_buckets=["head"])),
        ("kcenter_coreset", [], KCenterCoreset(fraction=0.5, features="hashed")),
        ("facility_location", [], FacilityLocation(top_k=30, features="hashed")),
    ]
    from curate.filters.paragraph_dedup import ParagraphDedup
    from curate.filters.pii import PIIRedact
    from curate.filters.substring_dedup import SubstringDedup

    cases += [("pii_redact", [], PIIRedact()), ("paragraph_dedup", [], ParagraphDedup()),
              ("substring_dedup", [], SubstringDedup())]
    if importlib.util.find_spec("fasttext") is not None:
        from curate.filters.fasttext_ops import LanguageId, find_lid_model

        if find_lid_model() is not None:
            cases.append(("language_id", [], LanguageId(min_score=0.9)))
    return cases


def _run(tmp_path: Path, src: Path, ops: list[Operator]) -> tuple[pl.DataFrame, Path]:
    out = tmp_path / "out"
    rej = tmp_path / "rejects"
    Pipeline(read(str(src), batch_size=40), *ops, write(str(out), format="parquet"),
             RejectsSpec(path=str(rej), format="parquet")).run(work_dir=str(tmp_path / "w"), workers=1,
                                                                progress=False)
    return pl.concat([pl.read_parquet(p) for p in sorted(out.glob("*.parquet"))], how="vertical"), rej


def _dtype_problems(frame: pl.DataFrame, cols: dict[str, Column]) -> list[str]:
    return [f"{c}: {frame.schema[c]} declared {d.dtype_name()}" for c, d in cols.items()
            if c in frame.columns and not d.matches(frame.schema[c])]


@pytest.mark.parametrize("case", _cheap_cases(), ids=lambda c: c[0])
def test_a_real_run_adds_exactly_the_declared_columns(case, tmp_path):
    _, before, op = case
    src = _corpus(tmp_path)
    base, _ = _run(tmp_path / "base", src, before) if before else (None, None)
    out, rej_dir = _run(tmp_path / "run", src, [*before, op])
    fields = {k for line in src.read_text().splitlines() for k in json.loads(line)}
    known = set(base.columns) if base is not None else fields
    adds = op.adds()
    kept_cols = {c: d for c, d in adds.items() if not d.rejects_only}
    assert out.height > 0
    assert set(out.columns) - known == set(kept_cols), f"kept rows: {set(out.columns) - known} vs {set(kept_cols)}"
    assert not _dtype_problems(out, kept_cols)
    parts = sorted((rej_dir / op.step_name).glob("*.parquet"))
    if parts:  # every case but the no-list URL filter rejects something; the declared columns are on those rows
        rej = pl.concat([pl.read_parquet(p) for p in parts], how="vertical_relaxed")
        assert rej.height > 0
        assert set(rej.columns) - known - set(REJECT_COLUMNS) == set(adds), set(rej.columns) - known
        assert not _dtype_problems(rej, adds)


def test_cli_ops_shows_columns_with_dtype_and_null_meaning(capsys):
    assert cli_main(["ops", "gopher_quality"]) == 0
    out = capsys.readouterr().out
    assert "gq_n_words" in out and "UInt32" in out and "never drops" in out
    assert "Gopher" in out and "min_doc_words" in out


def test_cli_ops_unknown_name_is_an_error_with_suggestions(capsys):
    assert cli_main(["ops", "gopher_qualty"]) == 2
    err = capsys.readouterr().err
    assert "unknown operator 'gopher_qualty'" in err and "did you mean gopher_quality" in err
    assert cli_main(["ops", "gopher"]) == 0  # a part of names still lists every match
    out = capsys.readouterr().out
    assert "gopher_quality" in out and "gopher_repetition" in out
