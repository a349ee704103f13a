"""`distill()` end to end on a tiny local teacher folder: cache build + refusal, train, report, resume."""

from __future__ import annotations

import pytest

from tests.conftest import make_tiny_teacher

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture
def teacher_dir(tmp_path):
    return make_tiny_teacher(tmp_path)


def _cfg(root, **kw):
    from curate.distill.config import DistillConfig

    d = dict(teacher={"path": str(root / "teacher")},
             student={"from_config": {"base": "teacher", "num_hidden_layers": 1, "hidden_size": 16,
                                      "intermediate_size": 32}},
             data={"train": [str(root / "train.jsonl")], "prompt_field": "q", "response_field": "a",
                   "template": "{prompt} {response}", "eval_fraction": 0.2, "max_len": 32},
             output_dir=str(root / "run"), optim={"batch_size": 4, "max_steps": 4}, progress=False, plot=False,
             threads=1)
    d.update(kw)
    return DistillConfig.model_validate(d)


def test_distill_cache_mode_report_and_resume(teacher_dir):
    from curate.distill import build_cache, distill
    from curate.distill.cache import CacheMismatchError

    cache_dir = str(teacher_dir / "cache")
    cfg = _cfg(teacher_dir, teacher_signal={"mode": "cache", "dir": cache_dir, "k": 8})
    res = distill(cfg)
    ev = res.report["eval"]
    assert res.train["steps"] == 4
    assert ev["teacher"]["params"] > ev["student"]["params"]
    for key in ("retention_ppl", "top1_agreement", "kl_teacher_student", "js_teacher_student"):
        assert key in ev
    assert 0 <= ev["top1_agreement"] <= 1 and ev["kl_teacher_student"] > 0
    assert ev["retention_ppl"] == pytest.approx(ev["teacher"]["ppl"] / ev["student"]["ppl"])
    assert (res.output_dir / "report.md").read_text().count("|") > 20
    assert (res.output_dir / "student" / "model.safetensors").exists()
    assert len((res.output_dir / "metrics.jsonl").read_text().splitlines()) == 4
    # the cache is reused when it matches, refused when k or the data differ
    assert build_cache(cfg).meta["num_sequences"] == 32  # 40 examples, 8 held out
    with pytest.raises(CacheMismatchError, match="k"):
        build_cache(_cfg(teacher_dir, teacher_signal={"mode": "cache", "dir": cache_dir, "k": 4}))
    other = _cfg(teacher_dir, teacher_signal={"mode": "cache", "dir": cache_dir, "k": 8})
    other.data.max_len = 8
    with pytest.raises(CacheMismatchError):
        build_cache(other)
    # resume continues to a larger step budget from the checkpoint
    more = _cfg(teacher_dir, teacher_signal={"mode": "cache", "dir": cache_dir, "k": 8},
                optim={"batch_size": 4, "max_steps": 6})
    assert distill(more, resume=True).train["steps"] == 6


def test_cli_distill_online(teacher_dir, capsys):
    import yaml

    from curate.cli import main

    cfg = _cfg(teacher_dir, loss={"name": "generalized_jsd", "beta": 0.5, "alpha": 0.0})
    p = teacher_dir / "d.yaml"
    p.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert main(["distill", str(p), "--max-steps", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "performance retention" in out and "top-1 agreement" in out
