"""Pipeline YAML hardening (alias bombs, duplicate keys, unknown keys, code imports), the distribution
name, and the CLI's --version / --limit / --dry-run / piped output (issue 11 items 12, 14, 17, 18, 20)."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from curate import ConfigError, GlobalStage, Pipeline, read, register, write
from curate.core.config import MAX_EXPANDED_NODES, load_yaml
from curate.core.progress import QUIET_ENV, Progress, report

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "data" / "web_sample.jsonl.gz"


def _cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """``curate`` in a real subprocess; stdout and stderr are pipes (as under CI or nohup)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "curate.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _bomb(levels: int) -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for k in range(1, levels):
        prev, cur = chr(ord("a") + k - 1), chr(ord("a") + k)
        lines.append(f"{cur}: &{cur} [{','.join(['*' + prev] * 9)}]")
    return "\n".join(lines) + "\n"


@pytest.fixture()
def example(tmp_path: Path) -> Path:
    """A folder holding examples/ (the bundled sample and pipeline), as a user's checkout has it."""
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    return tmp_path


# -- item 12: alias bombs and duplicate keys ------------------------------------------------------
def test_alias_bomb_is_refused_with_its_line(tmp_path: Path):
    f = tmp_path / "bomb.yaml"
    f.write_text(_bomb(6))  # 9^6 = 531,441 leaves: loads (slowly) without a bound
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"line 6: YAML aliases expand this value to [\d,]+ nodes") as e:
        load_yaml(f)
    assert time.perf_counter() - t0 < 2.0
    assert f"{MAX_EXPANDED_NODES:,}" in str(e.value)


def test_billion_laughs_validate_is_quick(tmp_path: Path):
    (tmp_path / "bomb.yaml").write_text(_bomb(9))  # the document: 9^9 leaves, 45 s and 3.3 GB before
    t0 = time.perf_counter()
    r = _cli("validate", "bomb.yaml", cwd=tmp_path, timeout=30)
    assert r.returncode == 2 and "alias" in r.stderr and "line " in r.stderr, r.stderr
    assert time.perf_counter() - t0 < 20


def test_deeply_nested_yaml_is_one_clear_error(tmp_path: Path):
    f = tmp_path / "deep.yaml"
    f.write_text("input: " + "[" * 20_000 + "]" * 20_000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_yaml(f)


def test_small_anchors_and_merge_keys_still_work(tmp_path: Path):
    f = tmp_path / "p.yaml"
    f.write_text(f"base: &b {{path: {EXAMPLE}, text_field: text}}\n"
                 "input: {<<: *b, batch_size: 100}\nsteps: []\noutput: {path: out}\n")
    data, _ = load_yaml(f)
    assert data["input"] == {"path": str(EXAMPLE), "text_field": "text", "batch_size": 100}


def test_duplicate_keys_name_both_lines(tmp_path: Path):
    f = tmp_path / "p.yaml"
    f.write_text(f"input: {{path: {EXAMPLE}}}\nsteps:\n  - exact_dedup: {{}}\noutput: {{path: out}}\n"
                 "steps:\n  - length_filter: {min_words: 5}\n")
    with pytest.raises(ConfigError, match=r"line 5: duplicate key 'steps' \(first at line 2\)"):
        Pipeline.from_yaml(f)
    g = tmp_path / "q.yaml"
    g.write_text(f"input: {{path: {EXAMPLE}}}\nsteps:\n  - length_filter:\n      min_words: 5\n"
                 "      min_words: 50\noutput: {path: out}\n")
    with pytest.raises(ConfigError, match=r"line 5: duplicate key 'min_words' \(first at line 4\)"):
        Pipeline.from_yaml(g)


def test_distill_configs_share_the_strict_loader(tmp_path: Path):
    from curate.distill.config import DistillConfig

    f = tmp_path / "d.yaml"
    f.write_text("output_dir: a\noutput_dir: b\n")
    with pytest.raises(ConfigError, match=r"line 2: duplicate key 'output_dir' \(first at line 1\)"):
        DistillConfig.from_yaml(f)


# -- item 20: unknown keys get "did you mean" -----------------------------------------------------
def test_unknown_keys_suggest_the_known_ones(tmp_path: Path):
    f = tmp_path / "p.yaml"
    f.write_text(f"input: {{path: {EXAMPLE}, text_feild: text}}\nsteps:\n  - gopher_quality: {{min_doc_word: 50}}\n"
                 "output: {path: out, formt: parquet}\nrejects: {path: r, keep_txt: true}\n"
                 "executor: {type: local, worker: 2}\nwork_dri: w\n")
    with pytest.raises(ConfigError) as e:
        Pipeline.from_yaml(f)
    msg = str(e.value)
    for line, loc, good in [(1, "input.text_feild", "text_field"), (3, "steps[0].gopher_quality.min_doc_word",
                                                                     "min_doc_words"),
                            (4, "output.formt", "format"), (5, "rejects.keep_txt", "keep_text"),
                            (6, "executor.worker", "workers"), (7, "work_dri", "work_dir")]:
        assert re.search(rf"line {line}: {re.escape(loc)}: unknown key '\w+' \(did you mean {good}\b", msg), msg


# -- item 14: code named in YAML needs an opt-in --------------------------------------------------
def _shapley_yaml(tmp_path: Path) -> Path:
    pytest.importorskip("sklearn", reason="shapley needs the select extra")
    # labelled rows: shapley needs its label column, which the preflight checks before work
    data = tmp_path / "labelled.jsonl"
    pl.read_ndjson(EXAMPLE).head(40).with_columns(label=pl.int_range(pl.len()) % 2).write_ndjson(data)
    f = tmp_path / "p.yaml"
    f.write_text(f"input: {{path: {data}}}\nsteps:\n  - shapley:\n      method: tmc\n"
                 "      utility: 'os:getcwd'\noutput: {path: out}\n")
    return f


def test_code_import_is_refused_without_opt_in(tmp_path: Path):
    f = _shapley_yaml(tmp_path)
    with pytest.raises(ConfigError, match=r"line 5: steps\[0\].shapley.utility: 'os:getcwd' would import and run "
                                          r"Python code.*--allow-code"):
        Pipeline.from_yaml(f)
    p = Pipeline.from_yaml(f, allow_code=True)
    assert p.steps[0].params.utility == "os:getcwd"


def test_validate_lists_code_imports(tmp_path: Path):
    _shapley_yaml(tmp_path)
    r = _cli("validate", "p.yaml", cwd=tmp_path)
    assert r.returncode == 2 and "--allow-code" in r.stderr, r.stderr
    r = _cli("validate", "p.yaml", "--allow-code", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "imports Python code (allowed by --allow-code): steps[0].shapley.utility: os:getcwd" in r.stdout


# -- item 17: the distribution name ---------------------------------------------------------------
def test_install_hints_use_the_distribution_name():
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads TOML")
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert meta["name"] == "curate-llm" and meta["scripts"]["curate"] == "curate.cli:main"
    assert meta["optional-dependencies"]["all"][0].startswith("curate-llm[")
    from curate.core.errors import MissingDependencyError

    assert "pip install 'curate-llm[embed]'" in str(MissingDependencyError("semdedup", "faiss", "embed"))
    offenders = []
    for path in [REPO / "README.md", *REPO.glob("examples/**/*.md"), *REPO.glob("curate/**/*.py"),
                 *REPO.glob("tests/**/*.py"), *REPO.glob("scripts/*")]:
        text = path.read_text(encoding="utf-8")
        offenders += [f"{path}: {m}" for m in re.findall(r"pip install [^\n]*'curate\[[^\n]*", text)]
    assert not offenders, offenders


# -- item 20: --version, --dry-run, --limit -------------------------------------------------------
def test_version(tmp_path: Path):
    import curate

    r = _cli("--version", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith(f"curate {curate.__version__}"), r.stdout + r.stderr


def test_dry_run_prints_the_plan_and_writes_nothing(example: Path):
    before = sorted(p.relative_to(example) for p in example.rglob("*"))
    r = _cli("run", "examples/pipeline.yaml", "--dry-run", cwd=example)
    assert r.returncode == 0, r.stderr
    assert sorted(p.relative_to(example) for p in example.rglob("*")) == before
    assert "segment 0: length_filter" in r.stdout and "1 shard(s) to run, 0 done" in r.stdout
    assert "fit exact_dedup: to fit" in r.stdout
    assert _cli("run", "examples/pipeline.yaml", "--no-progress", cwd=example).returncode == 0
    r = _cli("run", "examples/pipeline.yaml", "--dry-run", cwd=example)
    assert "fit exact_dedup: done, resumed" in r.stdout and "0 shard(s) to run, 1 done (resumed)" in r.stdout


def test_limit_runs_on_a_sample_in_separate_folders(example: Path):
    r = _cli("run", "examples/pipeline.yaml", "--limit", "40", "--no-progress", cwd=example)
    assert r.returncode == 0, r.stderr
    assert "40 docs in" in r.stdout
    assert not (example / "out" / "example").exists() and not (example / ".curate" / "example").exists()
    kept = pl.read_parquet(example / "out" / "example.limit-40" / "*.parquet")
    first = pl.read_ndjson(EXAMPLE).head(40)
    assert 0 < kept.height <= 40 and set(kept["id"]) <= set(first["id"])
    assert (example / "out" / "example-rejects.limit-40").is_dir()
    # the trial resumes like any run, and a full run afterwards starts from nothing
    r = _cli("run", "examples/pipeline.yaml", "--limit", "40", "--dry-run", cwd=example)
    assert "0 shard(s) to run, 1 done (resumed)" in r.stdout, r.stdout
    r = _cli("run", "examples/pipeline.yaml", "--dry-run", cwd=example)
    assert "1 shard(s) to run, 0 done" in r.stdout, r.stdout


# -- item 18: output to pipes and logs ------------------------------------------------------------
def test_piped_run_prints_plain_progress_and_the_whole_table(example: Path):
    r = _cli("run", "examples/pipeline.yaml", cwd=example)
    assert r.returncode == 0, r.stderr
    spinner = re.compile("[\u2800-\u28ff\u25d0-\u25d3\u2500-\u2503]\\s*\\r|\x1b\\[")  # braille spinners, cursor codes
    assert not spinner.search(r.stdout + r.stderr)
    assert "\x1b" not in r.stdout
    progress = [ln for ln in r.stderr.splitlines() if ln.startswith("progress: ")]
    assert any("input 0.6 MB in 1 shard(s)" in ln for ln in progress), r.stderr
    assert any(re.search(r"segment 0: .* \| 519 docs \(done\) \| [\d,]+ docs/s", ln) for ln in progress), r.stderr
    row = next(ln for ln in r.stdout.splitlines() if "gopher_quality" in ln)
    # every reason of the row on its one line: not folded at 80 (or 160) columns
    assert re.search(r"gopher_below_alpha_threshold [\d,]+, gopher_short_doc [\d,]+, gopher_\w+ [\d,]+", row), r.stdout


def test_plain_progress_lines_and_quiet_third_party_bars():
    out = io.StringIO()
    saved = {k: os.environ.pop(k, None) for k in QUIET_ENV}
    try:
        with Progress(plain=True, stream=out, interval=0.0, input_files=[str(EXAMPLE)], shards=1) as bar:
            assert os.environ["TQDM_DISABLE"] == "1" and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
            # a worker started now (spawn, as the executors do) gets disabled tqdm bars
            probe = "import tqdm, sys; sys.exit(0 if tqdm.tqdm(range(3)).disable else 1)"
            assert subprocess.run([sys.executable, "-c", probe]).returncode == 0
            bar.start("fitting semdedup")
            report(3, 10, "shards")
            bar.start("segment 1: semdedup")
            bar.advance(250)
        assert all(k not in os.environ for k in QUIET_ENV)  # restored after the run
    finally:
        os.environ.update({k: v for k, v in saved.items() if v is not None})
    lines = out.getvalue().splitlines()
    assert lines[0] == f"progress: input {EXAMPLE.stat().st_size / 1e6:,.1f} MB in 1 shard(s)"
    assert "progress: fitting semdedup | 3 of 10 shards | 30% |" in out.getvalue()
    assert any(ln.startswith("progress: segment 1: semdedup | 250 docs (done) |") for ln in lines)
    report(1, 2)  # outside a run: a no-op


@register("progress_reporting_stage_for_test")
class _ReportingStage(GlobalStage):
    """Keeps every row; its fit reports progress through ``ctx.progress``."""

    def fit(self, ctx) -> None:
        n = sum(b.height for b in ctx.iter_batches())
        for done in (0, n // 2, n):
            ctx.progress(done, n, "docs")

    def apply(self, batch: pl.DataFrame) -> pl.DataFrame:
        return batch


def test_fit_progress_reaches_the_log(tmp_path: Path, capfd):
    Pipeline(read(str(EXAMPLE)), _ReportingStage(), write(str(tmp_path / "out"))).run(
        work_dir=str(tmp_path / "w"), workers=1)
    err = capfd.readouterr().err
    assert "progress: fitting progress_reporting_stage_for_test | 519 of 519 docs (done)" in err, err
