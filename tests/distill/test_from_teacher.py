"""`distill()` with a student pruned from the teacher, a bf16-built cache, a curriculum order and greedy
samples; config validation of `student.from_teacher` and `data.order`."""

from __future__ import annotations

import json

import pytest

from tests.conftest import make_tiny_teacher

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from curate.core.errors import ConfigError  # noqa: E402


@pytest.fixture
def teacher_dir(tmp_path):
    torch.set_num_threads(1)
    return make_tiny_teacher(tmp_path, layers=3, examples=30, max_response=12)


def _cfg(root, **kw):
    from curate.distill.config import DistillConfig

    d = dict(teacher={"path": str(root / "teacher")},
             student={"from_teacher": {"keep_layers": 2, "importance": "block_influence", "calibration_examples": 8,
                                       "intermediate_size": 48}},
             data={"train": [str(root / "train.jsonl")], "prompt_field": "q", "response_field": "a",
                   "template": "{prompt} {response}", "eval_fraction": 0.2, "max_len": 32,
                   "order": "teacher_entropy_asc"},
             teacher_signal={"mode": "cache", "dir": str(root / "cache"), "k": 8, "dtype": "bfloat16"},
             eval={"samples": 3, "sample_tokens": 6},
             output_dir=str(root / "run"), optim={"batch_size": 4, "max_steps": 3}, progress=False, plot=False,
             threads=1)
    d.update(kw)
    return DistillConfig.model_validate(d)


def test_distill_from_pruned_teacher_with_curriculum_and_samples(teacher_dir):
    from curate.distill import distill
    from curate.models.pruning import choose_layers

    res = distill(_cfg(teacher_dir))
    init = res.report["student_init"]
    assert init["kept_layers"] == choose_layers(init["layer_scores"], 2) and len(init["layer_scores"]) == 3
    ev = res.report["eval"]
    assert ev["student"]["params"] < ev["teacher"]["params"]
    rows = [json.loads(x) for x in (res.output_dir / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and set(rows[0]) == {"prompt", "reference", "teacher", "student"}
    assert rows[0]["prompt"].startswith("w")
    assert ev["samples"] == 3 and 0 <= ev["distinct_2"] <= 1 and "teacher_distinct_2" in ev
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(res.output_dir / "student")
    assert saved.config.num_hidden_layers == 2 and saved.config.intermediate_size == 48


def test_curriculum_order_is_the_cache_signal_order(teacher_dir):
    from curate.distill.run import build_cache, prepare
    from curate.distill.trainer import DistillTrainer
    from curate.models.topk_cache import cache_signals, curriculum

    cfg = _cfg(teacher_dir)
    p = prepare(cfg)
    cache = build_cache(cfg, p)
    vals = cache_signals(cache.dir, starts=p.train.n_prompt)["teacher_entropy"]
    want = curriculum(vals)
    assert vals[want[0]] <= vals[want[-1]]
    tr = DistillTrainer(cfg, p.student, p.train, cache=cache, vocab=p.vocab, pad_id=p.pad_id)
    tr.fixed_order = want
    assert tr.batch_indices(0) == want[:4] and tr.batch_indices(tr.batches_per_epoch) == want[:4]


def test_from_teacher_validation(teacher_dir):
    with pytest.raises(ValueError, match="exactly one of `path` or `from_config`"):
        _cfg(teacher_dir, student={"from_config": {"base": "teacher"}, "from_teacher": {"keep_layers": 1}})
    with pytest.raises(ValueError, match="importance"):
        _cfg(teacher_dir, student={"from_teacher": {"keep_layers": 1, "importance": "every_kth"}})
    with pytest.raises(ValueError, match="student only"):
        _cfg(teacher_dir, teacher={"from_teacher": {"keep_layers": 1}})
    with pytest.raises(ValueError, match="teacher cache"):
        _cfg(teacher_dir, teacher_signal={"mode": "online"})
    from curate.distill.config import DistillConfig

    y = teacher_dir / "d.yaml"
    y.write_text(f"teacher: {{path: {teacher_dir / 'teacher'}}}\nstudent:\n  from_teacher: {{keep_layers: 0}}\n"
                 f"data: {{train: [{teacher_dir / 'train.jsonl'}]}}\noutput_dir: x\n")
    with pytest.raises(ConfigError, match="keep_layers"):
        DistillConfig.from_yaml(y)


def test_online_bf16_teacher_trains_and_reports_fp32_teacher(teacher_dir):
    import math

    from curate.distill import distill
    from curate.distill.run import prepare

    cfg = _cfg(teacher_dir, teacher_signal={"mode": "online", "dtype": "bfloat16"},
               data={"train": [str(teacher_dir / "train.jsonl")], "prompt_field": "q", "response_field": "a",
                     "template": "{prompt} {response}", "eval_fraction": 0.2, "max_len": 32},
               eval={"samples": 0})
    res = distill(cfg)
    assert res.train["steps"] == 3 and math.isfinite(res.train["final_loss"])
    # the held-out teacher figures are the loaded fp32 teacher's, not the bf16 training copy's
    p = prepare(cfg, need_student=False)
    from curate.distill.evaluate import evaluate_models

    ev = evaluate_models(p.teacher, None, p.eval, device=torch.device("cpu"), vocab=p.vocab, pad_id=p.pad_id)
    assert res.report["eval"]["teacher"]["ppl"] == pytest.approx(ev["student"]["ppl"], rel=1e-6)
    assert "samples" not in res.report["eval"]
