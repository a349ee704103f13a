"""Resume and rerun decisions: finished segments and fits reused, a changed step or file reruns."""

from __future__ import annotations

import json
import os
import time

from pipeline_corpus import pipeline

from curate import Pipeline, read, write
from curate.filters.c4 import C4Quality
from curate.filters.exact_dedup import ExactDedup
from curate.filters.gopher import GopherQuality, GopherRepetition
from curate.filters.length import LengthFilter


def test_rerun_resumes_and_config_change_reruns(corpus, tmp_path):
    p = pipeline(corpus, tmp_path / "out")
    first = p.run(work_dir=str(tmp_path / "w"), workers=1, progress=False)
    again = pipeline(corpus, tmp_path / "out").run(work_dir=str(tmp_path / "w"), workers=1, progress=False)
    assert again.resumed_shards == 2 * 4  # both segments, every shard
    assert [s.to_dict() for s in first.steps] == [s.to_dict() for s in again.steps]
    changed = Pipeline(read(str(corpus / "*.jsonl"), batch_size=50), LengthFilter(min_words=20), GopherRepetition(),
                       GopherQuality(), ExactDedup(), C4Quality(), write(str(tmp_path / "out")))
    res = changed.run(work_dir=str(tmp_path / "w"), workers=1, progress=False)
    assert res.resumed_shards == 4  # segment 0 and the dedup fit are reused; the last segment reran
    assert res.docs_out < first.docs_out  # the terminal-punctuation rule is on again


def test_editing_a_file_named_by_a_parameter_reruns_the_step(tmp_path):
    blocklist = tmp_path / "block.txt"
    blocklist.write_text("nothing-blocked.example\n")
    f = tmp_path / "in.jsonl"
    f.write_text(json.dumps({"text": "some words here", "url": "https://spam.example/x"}) + "\n")
    from curate.filters.url import URLFilter

    def run() -> int:
        return Pipeline(read(str(f)), URLFilter(blocked_domains_file=str(blocklist)), write(str(tmp_path / "o"))).run(
            work_dir=str(tmp_path / "w"), workers=1, progress=False).docs_out

    assert run() == 1
    blocklist.write_text("spam.example\n")
    os.utime(blocklist, (time.time() + 5, time.time() + 5))
    assert run() == 0  # same parameters, new file contents: not resumed from the stale result
