"""The preflight: `curate validate` (and every run, before any work) reports what a run would reject, all at
once with the step and key: a text field absent from any input format, a broken column chain, files named
by parameters that do not exist, user fields that clash with curate's columns. Plus the runtime half of
the name rule and curate's own error type from operators."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from curate import Pipeline, read, read_output, write
from curate.cli import main as cli_main
from curate.core.errors import ConfigError, InputError, PreflightError, StepError
from curate.filters.length import LengthFilter

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "data" / "web_sample.jsonl.gz"


def _rows(n: int = 60) -> list[dict]:
    return [json.loads(line) for line in gzip.open(EXAMPLE, "rt")][:n]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _yaml(tmp_path: Path, body: str) -> Path:
    cfg = tmp_path / "p.yaml"
    cfg.write_text(body)
    return cfg


def _validate(cfg: Path, capsys) -> tuple[int, str]:
    rc = cli_main(["validate", str(cfg)])
    cap = capsys.readouterr()
    return rc, cap.out + cap.err


# ------------------------------------------------------------------------------------------ text field
@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "jsonl.zst", "parquet"])
def test_text_field_absent_from_the_input_is_caught_by_validate(fmt, tmp_path, capsys):
    rows = [{"id": r["id"], "content": r["text"]} for r in _rows(5)]
    f = tmp_path / f"in.{fmt}"
    if fmt == "parquet":
        pl.DataFrame(rows).write_parquet(f)
    else:
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
        if fmt == "jsonl.gz":
            data = gzip.compress(data)
        elif fmt == "jsonl.zst":
            import zstandard

            data = zstandard.ZstdCompressor().compress(data)
        f.write_bytes(data)
    cfg = _yaml(tmp_path, f"input: {{path: {f}}}\nsteps:\n  - length_filter: {{}}\noutput: {{path: {tmp_path / 'o'}}}\n")
    rc, out = _validate(cfg, capsys)
    assert rc == 2 and "input.text_field: no field 'text'" in out and "content" in out and str(f) in out
    ok = _yaml(tmp_path, f"input: {{path: {f}, text_field: content}}\nsteps:\n  - length_filter: {{}}\n"
                         f"output: {{path: {tmp_path / 'o'}}}\n")
    assert cli_main(["validate", str(ok)]) == 0


def test_a_json_array_file_is_peeked_and_output_columns_are_checked(tmp_path):
    f = tmp_path / "docs.json"
    f.write_text(json.dumps([{"id": "a", "body": "some words"}, {"id": "b", "body": "more words"}]))
    with pytest.raises(PreflightError, match="no field 'text'.*body"):
        Pipeline(read(str(f)), write(str(tmp_path / "o"))).check()
    src = _jsonl(tmp_path / "in.jsonl", _rows(5))
    with pytest.raises(PreflightError, match="output.columns: no column 'gq_n_words'"):
        Pipeline(read(str(src)), LengthFilter(), write(str(tmp_path / "o"), columns=["n_words", "gq_n_words"])).check()
    Pipeline(read(str(src)), LengthFilter(), write(str(tmp_path / "o"), columns=["n_words"])).check()


def test_text_files_have_no_fields_to_check(tmp_path, capsys):
    d = tmp_path / "txt"
    d.mkdir()
    (d / "a.txt").write_text("a plain text document with some words")
    cfg = _yaml(tmp_path, f"input: {{path: {d}}}\nsteps:\n  - length_filter: {{}}\noutput: {{path: {tmp_path / 'o'}}}\n")
    assert _validate(cfg, capsys)[0] == 0


# ------------------------------------------------------------------------------------------ column chain
def test_missing_embedding_and_label_columns_are_found_before_any_work(tmp_path, capsys):
    src = _jsonl(tmp_path / "in.jsonl", _rows())
    work = tmp_path / "work"
    cfg = _yaml(tmp_path, f"""input: {{path: {src}}}
steps:
  - length_filter: {{}}
  - exact_dedup: {{}}
  - kcenter_coreset: {{features: embedding, fraction: 0.5}}
  - shapley: {{label_field: quality}}
  - perplexity_bucket: {{column: ppl}}
output: {{path: {tmp_path / 'o'}}}
work_dir: {work}
""")
    rc, out = _validate(cfg, capsys)
    assert rc == 2
    assert "steps[2].kcenter_coreset: needs column 'embedding'" in out and "add an `embed` step" in out
    assert "steps[3].shapley: needs column 'quality'" in out and "set label_field" in out
    assert "steps[4].perplexity_bucket: needs column 'ppl'" in out and "`perplexity` step" in out
    assert cli_main(["run", str(cfg), "--no-progress"]) == 2  # the same check, before any work
    assert not work.exists() and not (tmp_path / "o").exists()


def test_a_column_added_by_a_later_step_is_named(tmp_path):
    from curate.selectors.perplexity import PerplexityBucket

    src = _jsonl(tmp_path / "in.jsonl", _rows(10))
    p = Pipeline(read(str(src)), PerplexityBucket(column="n_words"), LengthFilter(), write(str(tmp_path / "o")))
    with pytest.raises(PreflightError, match=r"steps\[0\].perplexity_bucket: needs column 'n_words'.*"
                                             r"step 'length_filter' adds it, but after this one"):
        p.check()
    Pipeline(read(str(src)), LengthFilter(), PerplexityBucket(column="n_words"), write(str(tmp_path / "o"))).check()


def test_a_column_the_input_has_satisfies_a_need(tmp_path):
    from curate.selectors.perplexity import PerplexityBucket

    rows = [dict(r, ppl=float(i)) for i, r in enumerate(_rows(30))]
    src = _jsonl(tmp_path / "in.jsonl", rows)
    res = Pipeline(read(str(src)), PerplexityBucket(keep_buckets=["head"]), write(str(tmp_path / "o"))).run(
        work_dir=str(tmp_path / "w"), workers=1, progress=False)
    assert 0 < res.docs_out < 30


# ------------------------------------------------------------------------------------------ files
def test_files_named_by_parameters_are_checked_all_at_once(tmp_path, capsys):
    src = _jsonl(tmp_path / "in.jsonl", [dict(r, label=i % 2) for i, r in enumerate(_rows())])
    cfg = _yaml(tmp_path, f"""input: {{path: {src}}}
steps:
  - perplexity: {{model: nope.arpa}}
  - url_filter: {{}}
  - dsir: {{target: {tmp_path}/missing/*.jsonl, top_k: 5}}
  - shapley: {{validation: no_such_val.jsonl}}
  - neural_perplexity: {{model: ./no/such/model.gguf}}
output: {{path: {tmp_path / 'o'}}}
""")
    rc, out = _validate(cfg, capsys)
    assert rc == 2
    assert "steps[0].perplexity.model: file not found: 'nope.arpa'" in out
    assert "steps[2].dsir.target:" in out and "matches no file" in out
    assert "steps[3].shapley.validation: file not found: 'no_such_val.jsonl'" in out
    assert "steps[4].neural_perplexity.model: model not found: './no/such/model.gguf'" in out


def test_a_hub_style_model_name_is_not_mistaken_for_a_missing_file(tmp_path):
    from curate.core.preflight import path_problems
    from curate.filters.embed import Embed

    assert path_problems([Embed(model="sentence-transformers/all-MiniLM-L6-v2")]) == []
    assert path_problems([Embed(model=str(tmp_path / "nope"))]) != []


# ------------------------------------------------------------------------------------------ name clashes
@pytest.mark.parametrize(("field", "steps", "who"), [
    ("n_words", "  - length_filter: {}\n", "step 'length_filter'"),
    ("dup_of", "  - exact_dedup: {}\n", "step 'exact_dedup'"),
    ("score", "  - length_filter: {}\n", "the rejects sink"),
    ("reason", "", "the rejects sink"),
    ("__src", "", "internal columns"),
])
def test_a_user_field_named_like_a_curate_column_is_refused_before_work(field, steps, who, tmp_path, capsys):
    src = _jsonl(tmp_path / "in.jsonl", [dict(r, **{field: "user value"}) for r in _rows(10)])
    work = tmp_path / "w"
    cfg = _yaml(tmp_path, f"input: {{path: {src}}}\nsteps:\n{steps or '  - length_filter: {}' + chr(10)}"
                          f"output: {{path: {tmp_path / 'o'}}}\nwork_dir: {work}\n")
    rc, out = _validate(cfg, capsys)
    assert rc == 2 and f"field '{field}'" in out and who in out and "rename" in out and str(src) in out
    assert cli_main(["run", str(cfg), "--no-progress"]) == 2
    assert not work.exists()


def test_a_field_named_like_a_column_no_step_adds_is_kept_unchanged(tmp_path):
    rows = [dict(r, n_words="user metadata") for r in _rows(10)]
    src = _jsonl(tmp_path / "in.jsonl", rows)
    from curate.filters.gopher import GopherQuality

    Pipeline(read(str(src)), GopherQuality(min_doc_words=1), write(str(tmp_path / "o"))).run(
        work_dir=str(tmp_path / "w"), workers=1, progress=False)
    out = read_output(tmp_path / "o")
    assert out.height > 0 and set(out["n_words"]) == {"user metadata"}


def test_a_text_field_beside_the_mapped_one_is_refused(tmp_path):
    rows = [{"id": r["id"], "content": r["text"], "text": "a user's own text field"} for r in _rows(5)]
    src = _jsonl(tmp_path / "in.jsonl", rows)
    with pytest.raises(PreflightError, match="field 'text'.*text_field is 'content'"):
        Pipeline(read(str(src), text_field="content"), write(str(tmp_path / "o"))).check()


def test_a_clashing_field_deep_in_the_input_stops_the_run_naming_file_and_field(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    rows = _rows(120)
    _jsonl(d / "a.jsonl", rows[:60])
    late = [dict(r) for r in rows[60:]]
    late[40]["n_words"] = 7  # past the rows the preflight peeks
    _jsonl(d / "b.jsonl", late)
    out = tmp_path / "o"
    p = Pipeline(read(str(d / "*.jsonl"), batch_size=10), LengthFilter(), write(str(out)))
    p.check()  # the first rows are clean
    with pytest.raises(InputError, match=r"b\.jsonl: input field 'n_words' clashes with a column of step "
                                         r"'length_filter'.*rename"):
        p.run(work_dir=str(tmp_path / "w"), workers=1, progress=False)
    assert (out / "part-00000.jsonl").is_file()  # the finished shard is kept
    assert not list(out.glob("part-00001*"))


# ------------------------------------------------------------------------------------------ errors
def test_operators_raise_curate_errors_naming_step_and_column(tmp_path):
    from curate.core.operator import FitContext
    from curate.filters.minhash import MinHashDedup
    from curate.selectors._features import resolve_source

    with pytest.raises(StepError, match="step 'kcenter_coreset' \\(column 'embedding'\\)") as e:
        resolve_source(["id", "text"], "embedding", "embedding", "kcenter_coreset")
    assert e.value.column == "embedding" and isinstance(e.value, ValueError)
    with pytest.raises(StepError, match="parameter 'num_perm'"):
        MinHashDedup(preset="nemo", num_perm=64).settings()
    from curate.selectors.shapley import Shapley

    spill = tmp_path / "spill"
    spill.mkdir()
    pl.DataFrame({"__uid": pl.Series([0, 1], dtype=pl.UInt64), "id": ["a", "b"], "text": ["x y", "y z"]}) \
        .write_parquet(spill / "batch-00000.parquet")
    ctx = FitContext(tmp_path, tmp_path, shards=[spill], scratch_dir=tmp_path)
    with pytest.raises(StepError, match="step 'shapley' \\(column 'nope'\\): no label column"):
        Shapley(label_field="nope").compute_scores(ctx)


def test_less_parameter_errors_are_config_errors_before_work():
    pytest.importorskip("pydantic")
    from pydantic import ValidationError

    from curate.selectors.less import Less

    with pytest.raises(ValidationError, match="less needs `model`"):
        Less(target="t.jsonl")
    with pytest.raises(ValidationError, match="checkpoints"):
        Less(target="t.jsonl", model="m", checkpoints=[9])


def test_validate_reports_config_errors_as_before(tmp_path):
    cfg = _yaml(tmp_path, "input: {path: nowhere.jsonl}\nsteps: []\noutput: {path: o}\n")
    with pytest.raises(ConfigError, match="file not found"):
        Pipeline.from_yaml(cfg)


def test_validate_reports_output_overlapping_the_input_with_the_other_problems(tmp_path, capsys):
    d = tmp_path / "data"
    d.mkdir()
    _jsonl(d / "part-00000.jsonl", _rows(5))
    cfg = _yaml(tmp_path, f"input: {{path: {d}}}\nsteps:\n  - perplexity: {{model: nope.arpa}}\n"
                          f"output: {{path: {d}}}\n")
    rc, out = _validate(cfg, capsys)
    assert rc == 2 and "output.path" in out and "input" in out and "file not found: 'nope.arpa'" in out
    assert sorted(p.name for p in d.iterdir()) == ["part-00000.jsonl"]  # nothing written, nothing removed
