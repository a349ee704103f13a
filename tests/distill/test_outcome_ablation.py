"""``curate report`` on the output folder of the curate-then-distill ablation (``run_ablation.py``).

Before, ``curate report out/ctd/cpu`` was refused ("neither a pipeline work dir nor a distill output dir").
Here two arms x two seeds of real tiny distillation runs go through the script's own ``run_one`` and
``write_summary``; the report's per-arm table is checked against a mean and sample std computed here.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from pathlib import Path

import pytest

from tests.conftest import make_tiny_teacher

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[2]


def _ablation_module():
    path = REPO / "examples" / "curate_then_distill" / "run_ablation.py"
    spec = importlib.util.spec_from_file_location("run_ablation_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_curate_report_renders_the_ablation_summary(tmp_path, one_thread):
    import yaml

    abl = _ablation_module()
    root = make_tiny_teacher(tmp_path, layers=3, examples=32, max_response=12)
    rows = [json.loads(x) for x in (root / "train.jsonl").read_text().splitlines()]
    (root / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:6]))
    for arm, part in (("raw", rows[6:19]), ("filtered", rows[19:])):
        (root / f"{arm}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    out = tmp_path / "abl"
    out.mkdir()
    results: dict[str, list[dict]] = {"raw": [], "filtered": []}
    for seed in (0, 1):
        for arm in results:
            cfg = dict(teacher={"path": str(root / "teacher")},
                       student={"from_teacher": {"keep_layers": 2, "layers": [0, 2]}},
                       data={"train": [str(root / f"{arm}.jsonl")], "eval": [str(root / "heldout.jsonl")],
                             "prompt_field": "q", "response_field": "a", "template": "{prompt} {response}",
                             "max_len": 32},
                       teacher_signal={"mode": "cache", "dir": str(out / f"cache-{arm}"), "k": 8},
                       optim={"batch_size": 4, "max_steps": 2}, eval={"samples": 3, "sample_tokens": 4},
                       output_dir=str(out / f"{arm}-seed{seed}"), seed=seed, progress=False, plot=False, threads=1)
            p = out / f"{arm}-seed{seed}.yaml"
            p.write_text(yaml.safe_dump(cfg))
            row = abl.run_one(p)
            row.update(arm=arm, seed=seed)
            results[arm].append(row)
    abl.write_summary(out, "test", {"seeds": [0, 1]}, [0, 2], results)

    from curate.cli import main

    assert main(["report", str(out)]) == 0
    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    for title in ("Arms (mean ± sample std over seeds)", "Per run", "Plots"):
        assert title in html and f"## {title}" in md
    assert html.count("<img") >= 6  # one plot per quality metric
    for arm, rs in results.items():  # the table holds mean ± sample std of the seeds, computed here
        top1 = [r["top1"] for r in rs]
        cell = f"{statistics.fmean(top1):.3f} ± {statistics.stdev(top1):.3f}"
        line = next(x for x in md.splitlines() if x.startswith(f"| {arm} | 2 |"))
        assert cell in line
        assert f"{arm}-seed1" in md  # each run dir is named
