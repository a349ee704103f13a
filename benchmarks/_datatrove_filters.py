"""DataTrove's equivalent of bench_filters' pipeline; run with DataTrove's own environment:
    python _datatrove_filters.py INPUT_DIR WORK_DIR WORKERS [spacy|regex]
``spacy``: DataTrove's default English word tokenizer (spaCy ``blank("en")``). ``regex``: its fastest
option we know of, a regex ``WordTokenizer`` passed as ``language`` (DataTrove's documented extension
point for custom tokenizers), using curate's own token pattern, so both sides tokenise the same way.
Prints one JSON line: seconds and kept count; kept ids go to WORK_DIR/kept_ids.json."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

from datatrove.utils.word_tokenizers import WordTokenizer, simple_span_tokenize

# curate.core.text.WORD_TOKEN and the clitic/hyphen rewrites of curate.core.text.words, in Python's re
WORD_TOKEN = re.compile(r"n't|N'T|['\u2019](?:s|m|ve|re|ll|d|S|M)\b|(?:[^\W_]\.){2,}|\.{2,}|-{2,}"
                        r"|[^\W_](?:\S*[^\W_])?|[^\w\s]|_")
CLITIC = re.compile(r"([^\W_])(n't|N'T|'s|'S|'m|'M|'ve|'re|'ll|'d|\u2019s)(\W|$)")
HYPHEN = re.compile(r"([A-Za-z])-([A-Za-z])")


class RegexTokenizer(WordTokenizer):
    """Words by one regex (no spaCy); sentences split after terminal punctuation or a newline."""

    _sent = re.compile(r".+?(?:[.!?\u2026]+[\"'\u201d\u2019)\]]*(?:\s|$)|\n|$)", re.S)

    def __init__(self) -> None:
        super().__init__("en")

    def word_tokenize(self, text: str) -> list[str]:
        t = CLITIC.sub(r"\1 \2\3", text)
        t = HYPHEN.sub(r"\1 - \2", HYPHEN.sub(r"\1 - \2", t))
        return WORD_TOKEN.findall(t)

    def sent_tokenize(self, text: str) -> list[str]:
        return [s.strip() for s in self._sent.findall(text) if s.strip()]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return list(simple_span_tokenize(text, self.sent_tokenize(text)))


if __name__ == "__main__":
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.exact_dedup import (
        ExactDedupConfig,
        ExactDedupFilter,
        ExactDedupSignature,
        ExactFindDedups,
    )
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    inp, work, workers = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    tok = sys.argv[4] if len(sys.argv) > 4 else "spacy"
    lang = RegexTokenizer() if tok == "regex" else "en"
    tasks = len(list(inp.glob("*.jsonl")))
    cfg = ExactDedupConfig(content_getter=lambda d: d.text)
    t0 = time.perf_counter()
    stages = [
        [JsonlReader(str(inp)), GopherRepetitionFilter(language=lang), GopherQualityFilter(language=lang),
         C4QualityFilter(language=lang), FineWebQualityFilter(language=lang),
         JsonlWriter(str(work / "filtered"), compression=None)],
        [JsonlReader(str(work / "filtered")), ExactDedupSignature(str(work / "sigs"), config=cfg, finder_workers=1)],
        [ExactFindDedups(str(work / "sigs"), str(work / "dups"), config=cfg)],
        [JsonlReader(str(work / "filtered")), ExactDedupFilter(str(work / "dups"), config=cfg),
         JsonlWriter(str(work / "out"), compression=None)],
    ]
    for i, st in enumerate(stages):
        n = 1 if i == 2 else tasks
        LocalPipelineExecutor(st, tasks=n, workers=min(workers, n), logging_dir=str(work / f"logs{i}"),
                              skip_completed=False).run()
    secs = time.perf_counter() - t0
    ids = []
    for p in sorted((work / "out").glob("*.jsonl")):
        ids += [json.loads(line)["id"] for line in p.open()]
    (work / "kept_ids.json").write_text(json.dumps(ids))
    print(json.dumps({"seconds": secs, "kept": len(ids)}))
