"""examples/synth: every config validates; tiny versions of the CPU ones run end to end (tiny teacher, few
rows), and the distill config reads what the rationale example writes."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("torch")
pytest.importorskip("transformers")

from curate.core.pipeline import Pipeline  # noqa: E402
from curate.distill.config import DistillConfig  # noqa: E402
from curate.io.writers import read_output  # noqa: E402
from curate.synth.api import synthesize  # noqa: E402
from tests.conftest import REPO, SHARED_DATA  # noqa: E402
from tests.synth.test_generators import tiny_teacher  # noqa: E402, F401 - fixture

EX = REPO / "examples" / "synth"
PIPELINES = ["self_instruct_cpu.yaml", "self_instruct_server.yaml", "gsm8k_rationale_cpu.yaml",
             "gsm8k_rationale_gpu.yaml"]


@pytest.fixture
def at_repo(monkeypatch):
    if not (SHARED_DATA / "instructions").is_dir():
        pytest.skip(f"instructions data not found under {SHARED_DATA}")
    monkeypatch.chdir(REPO)  # the README runs the configs from the repository root


@pytest.mark.parametrize("name", PIPELINES)
def test_example_configs_validate(at_repo, name):
    p = Pipeline.from_yaml(EX / name)
    assert p.steps and any(op.name in {"self_instruct", "rationale"} for op in p.steps)


def _tiny(cfg: dict, tmp: Path, teacher: str, **sizes) -> Path:
    cfg = copy.deepcopy(cfg)
    for step in cfg["steps"]:
        (name, params), = step.items()
        if name in {"self_instruct", "prompt_template", "llm_judge", "rationale", "evol_instruct", "ape"}:
            params["teacher"] = {"model": teacher, "chat": False, "device": "cpu"}
            params.setdefault("sampling", {})["max_new_tokens"] = 8
            params.update(sizes.get(name, {}))
    cfg["output"]["path"] = str(tmp / "out")
    cfg["work_dir"] = str(tmp / "work")
    f = tmp / "cfg.yaml"
    f.write_text(yaml.safe_dump(cfg))
    return f


def test_self_instruct_example_tiny(at_repo, tmp_path, tiny_teacher):  # noqa: F811
    cfg = yaml.safe_load((EX / "self_instruct_cpu.yaml").read_text())
    f = _tiny(cfg, tmp_path, tiny_teacher, self_instruct={
        "num_instructions": 2, "max_requests": 2, "request_batch_size": 2, "num_prompt_instructions": 2,
        "num_machine_in_prompt": 1})
    result, paths = synthesize(f, embeddings=False)
    st = json.loads((tmp_path / "work" / "stats.json").read_text())
    si = next(s for s in st["steps"] if s["step"] == "self_instruct")
    assert si["dropped"].get("seed_task") == 175  # keep_seeds: false counts every seed as dropped
    assert paths[0].exists() and paths[1].exists()


def test_rationale_example_tiny_feeds_distill(at_repo, tmp_path, tiny_teacher):  # noqa: F811
    cfg = yaml.safe_load((EX / "gsm8k_rationale_cpu.yaml").read_text())
    cfg["input"]["path"] = str(tmp_path / "few.jsonl")
    (tmp_path / "few.jsonl").write_text("\n".join((EX / "data" / "gsm8k_train_24.jsonl").read_text()
                                                  .splitlines()[:3]) + "\n")
    f = _tiny(cfg, tmp_path, tiny_teacher, rationale={"require_correct": False})
    synthesize(f, embeddings=False)
    out = read_output(tmp_path / "out")
    assert out.height == 3 and {"rationale", "gold_answer", "generator"} <= set(out.columns)
    d = yaml.safe_load((EX / "distill_rationale.yaml").read_text())
    d["data"]["train"] = [str(tmp_path / "out")]
    d["output_dir"] = str(tmp_path / "distill")
    y = tmp_path / "distill.yaml"
    y.write_text(yaml.safe_dump(d))
    dc = DistillConfig.from_yaml(y)
    assert dc.data.mode == "rationale"
    from curate.distill.data import read_records, tokenize_records
    from tests.models.test_teacher import byte_tokenizer

    data = tokenize_records(read_records(dc.data.train), byte_tokenizer(), dc.data)
    assert sorted(set(data.task)) == [0, 1]
    # and the student trains on them: curate distill in rationale mode, end to end on the tiny teacher
    from curate.distill import distill

    d["teacher"] = {"path": str(tiny_teacher)}
    d["student"] = {"from_config": {"base": "teacher", "num_hidden_layers": 1}}
    d["optim"] = {"batch_size": 2, "max_steps": 2}
    d.update(progress=False, plot=False, threads=1)
    d["eval"] = {"samples": 0}
    y.write_text(yaml.safe_dump(d))
    res = distill(DistillConfig.from_yaml(y))
    assert res.train["steps"] == 2 and res.train["train_tokens"] > 0 and 0 < res.train["final_loss"] < 20
    assert (tmp_path / "distill" / "student" / "config.json").is_file()
