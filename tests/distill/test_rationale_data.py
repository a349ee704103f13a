"""distill.yaml rationale mode: each generated row becomes a label task and a rationale task."""

from __future__ import annotations

import json

import polars as pl
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from curate.core.errors import ConfigError  # noqa: E402
from curate.distill.config import DataSpec, DistillConfig  # noqa: E402
from curate.distill.data import TASK_LABEL, TASK_RATIONALE, tokenize_records  # noqa: E402
from curate.distill.losses import LABEL_PREFIX, RATIONALE_PREFIX  # noqa: E402
from tests.conftest import shared_file  # noqa: E402


def _gsm_rows(n: int) -> pl.DataFrame:
    from curate.synth._answers import extract_answer, gsm8k_label

    rows = [json.loads(x) for x in shared_file("instructions/gsm8k/train.jsonl").read_text().splitlines()[:n]]
    # the rationale step's columns, filled from the reference solutions
    return pl.DataFrame({"text": [r["question"] for r in rows],
                         "rationale": [r["answer"][:extract_answer(r["answer"])[1]].strip() for r in rows],
                         "gold_answer": [gsm8k_label(r["answer"]) for r in rows]})


def test_rationale_mode_two_tasks_with_prefixes():
    from tests.synth.test_teacher import byte_tokenizer

    tok = byte_tokenizer()
    df = _gsm_rows(5).with_columns(pl.when(pl.int_range(pl.len()) == 4).then(None)
                                   .otherwise(pl.col("rationale")).alias("rationale"))
    spec = DataSpec(train=["x"], mode="rationale", max_len=4096)
    data = tokenize_records(df, tok, spec)
    assert data.task == [TASK_LABEL, TASK_RATIONALE] * 4 + [TASK_LABEL]  # row 5 lacks a rationale
    first = tok.decode(data.seqs[0][:data.n_prompt[0]])
    assert first.startswith(LABEL_PREFIX) and df["text"][0] in first
    assert tok.decode(data.seqs[0][data.n_prompt[0]:]).strip().startswith(df["gold_answer"][0])
    assert tok.decode(data.seqs[1][:data.n_prompt[1]]).startswith(RATIONALE_PREFIX)
    assert tok.decode(data.seqs[1][data.n_prompt[1]:]).strip().startswith(df["rationale"][0][:20])
    sub = data.subset([1, 2])
    assert sub.task == [TASK_RATIONALE, TASK_LABEL]
    plain = tokenize_records(df.rename({"gold_answer": "response"}).select("text", "response"), tok,
                             DataSpec(train=["x"], prompt_field="text", response_field="response", max_len=4096))
    assert plain.task == [] and plain.fingerprint() != data.fingerprint()


def test_rationale_mode_config(tmp_path):
    f = tmp_path / "r.jsonl"
    _gsm_rows(3).write_ndjson(f)
    y = tmp_path / "distill.yaml"
    y.write_text(f"teacher: {{path: {tmp_path}}}\nstudent: {{from_config: {{base: teacher}}}}\n"
                 f"data: {{train: [{f.name}], mode: rationale}}\nloss: {{rationale_weight: 0.3}}\noutput_dir: out\n")
    cfg = DistillConfig.from_yaml(y)
    assert cfg.data.mode == "rationale" and cfg.loss.rationale_weight == 0.3
    with pytest.raises(Exception):
        DataSpec(train=["x"], mode="rationale", prompt_field="a", response_field="b")
    with pytest.raises(ConfigError):
        tokenize_records(pl.DataFrame({"text": ["q"]}), None, DataSpec(train=["x"], mode="rationale"))
