"""The issue-12 operators in one YAML pipeline over the Dolma fixtures' WARC files."""

from __future__ import annotations

import json

import pytest
import yaml

from curate.core.pipeline import Pipeline

pytest.importorskip("fastwarc", reason="the web extra is not installed")
pytest.importorskip("resiliparse", reason="the web extra is not installed")
pytest.importorskip("pydivsufsort", reason="the dedup extra is not installed")


def test_warc_to_clean_text_pipeline(shared_data, tmp_path):
    cfg = {
        "input": {"path": str(shared_data / "web/dolma_fixtures/warc"), "format": "warc"},
        "steps": [{"html_extract": {"extractor": "resiliparse"}}, {"pii_redact": {}},
                  {"paragraph_dedup": {"expected_paragraphs": 10_000}}, {"substring_dedup": {"min_tokens": 30}},
                  {"decontaminate": {"benchmarks": [{"name": "gsm8k", "path": str(
                      shared_data / "instructions/gsm8k/test.jsonl")}]}}],
        "output": {"path": str(tmp_path / "out"), "format": "jsonl"},
        "work_dir": str(tmp_path / "work"),
        "executor": {"type": "local", "workers": 1},
    }
    p = tmp_path / "web.yaml"
    p.write_text(yaml.safe_dump(cfg))
    res = Pipeline.from_yaml(p).run(progress=False)
    steps = {s.step: s for s in res.steps}
    assert res.docs_in == 37
    for s in res.steps:  # rows in = kept + rejected at every step
        assert s.docs_in == s.docs_out + sum(s.dropped.values())
    assert steps["paragraph_dedup"].bytes_out < steps["paragraph_dedup"].bytes_in  # shared site menus/footers
    assert steps["paragraph_dedup"].counters["duplicate_paragraphs"] > 0
    assert steps["decontaminate"].counters["index_ngrams"] > 40_000  # 13-grams of the 1,319 questions
    assert steps["pii_redact"].counters.keys() >= {"pii_emails", "pii_ips", "pii_phones", "pii_cards"}
    rows = [json.loads(line) for f in sorted((tmp_path / "out").glob("*.jsonl")) for line in f.open()]
    assert len(rows) == res.docs_out > 20
    r = rows[0]
    assert r["url"].startswith("https://") and r["id"].startswith("<urn:uuid:") and r["date"]
    assert {"html_lang", "pii_emails", "para_dups", "substr_removed_tokens", "decont_matches"} <= set(r)
    assert not any("<html" in x["text"] for x in rows)
