"""`curate report` on a real pipeline run and a real (tiny) distill run, checked in headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytest.importorskip("matplotlib")


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium on this machine (apt-get install chromium)")


def _browser(html: Path, tmp: Path) -> tuple[str, Path]:
    """The DOM after load (scripts run) and a screenshot, from a real headless Chromium."""
    exe = _chromium()
    flags = [exe, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp / 'chrome'}"]
    dom = subprocess.run(flags + ["--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120).stdout
    shot = tmp / "shot.png"
    subprocess.run(flags + ["--window-size=1200,2400", f"--screenshot={shot}", html.as_uri()],
                   capture_output=True, timeout=120)
    return dom, shot


def _rendered(dom: str) -> tuple[int, int]:
    import re

    m = re.search(r'data-images-total="(\d+)" data-images-rendered="(\d+)"', dom)
    assert m, "the page's load handler did not run"
    return int(m.group(1)), int(m.group(2))


def _not_blank(png: Path) -> float:
    """Share of non-white pixels in the screenshot."""
    import matplotlib.image as mpimg

    img = mpimg.imread(png)[..., :3]
    return float((img.mean(axis=2) < 0.95).mean())


def test_pipeline_run_report_renders_in_a_browser(tmp_path):
    work = tmp_path / "proj"
    shutil.copytree(REPO / "examples", work / "examples")
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-m", "curate.cli", "run", "examples/pipeline.yaml", "--no-progress"],
                         cwd=work, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    rep = subprocess.run([sys.executable, "-m", "curate.cli", "report", ".curate/example", "--out", "rep"],
                         cwd=work, capture_output=True, text=True, env=env, timeout=300)
    assert rep.returncode == 0, rep.stderr
    html = work / "rep" / "report.html"
    text = html.read_text()
    for anchor in ("steps", "scores", "rejects", "dedup"):
        assert f"id='{anchor}'" in text
    stats = json.loads((work / ".curate/example/stats.json").read_text())
    gq = next(s for s in stats["steps"] if s["step"] == "gopher_quality")
    top_reason = max(gq["dropped"], key=gq["dropped"].get)
    assert top_reason in text  # the drop reasons of the run, not a template
    dom, shot = _browser(html, tmp_path)
    total, ok = _rendered(dom)
    assert total >= 10 and ok == total  # one bar chart + a histogram per threshold rule, all decoded
    assert _not_blank(shot) > 0.05
    md = (work / "rep" / "report.md").read_text()
    assert "| gopher_quality |" in md and (work / "rep" / "report_figures").is_dir()


def test_distill_run_report_has_curves_retention_and_samples(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from curate.distill import distill
    from curate.distill.config import DistillConfig
    from curate.report import write_report
    from tests.conftest import make_tiny_teacher

    make_tiny_teacher(tmp_path, max_response=9)
    cfg = DistillConfig.model_validate(dict(
        teacher={"path": str(tmp_path / "teacher")},
        student={"from_config": {"base": "teacher", "num_hidden_layers": 1, "hidden_size": 16, "intermediate_size": 32}},
        data={"train": [str(tmp_path / "train.jsonl")], "prompt_field": "q", "response_field": "a",
              "template": "{prompt} {response}", "eval_fraction": 0.2, "max_len": 32},
        output_dir=str(tmp_path / "run"), optim={"batch_size": 4, "max_steps": 6}, progress=False, plot=False,
        threads=1, log_every=1))
    distill(cfg)
    run = tmp_path / "run"
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]  # written by distill
    html, _ = write_report(run)
    assert html.name == "run_report.html"  # the run's own report.md is kept
    text = html.read_text()
    rep = json.loads((run / "report.json").read_text())
    assert f"{rep['eval']['student']['ppl']:.4g}" in text
    assert samples and samples[0]["prompt"][:200] in text and "id='curves'" in text
    dom, _ = _browser(html, tmp_path)
    total, ok = _rendered(dom)
    assert total >= 1 and ok == total


def test_report_refuses_a_folder_that_is_no_run(tmp_path):
    from curate.core.errors import ConfigError
    from curate.report import build_report

    with pytest.raises(ConfigError):
        build_report(tmp_path)


def test_report_never_replaces_a_file_it_did_not_write(tmp_path):
    """`curate report RUN --out DIR` into a folder holding the user's own report.html is refused; a
    report curate wrote there before is replaced."""
    from curate.core.errors import ConfigError
    from curate.report.html import Page

    page = Page("t")
    page.text(page.section("s", "s"), "hello")
    mine = tmp_path / "report.html"
    mine.write_text("<html>the user's own notes</html>")
    with pytest.raises(ConfigError, match="not written by curate report"):
        page.write(tmp_path)
    assert mine.read_text() == "<html>the user's own notes</html>" and not (tmp_path / "report.md").exists()
    other = tmp_path / "again"
    page.write(other)
    page.write(other)  # its own earlier report is replaced
    assert "hello" in (other / "report.html").read_text()
