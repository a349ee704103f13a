"""DataTrove's equivalent of bench_filters' pipeline; run with DataTrove's own environment:
    python _datatrove_filters.py INPUT_DIR WORK_DIR WORKERS
Prints one JSON line: seconds, kept ids file, peak RSS (MB)."""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

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
    tasks = len(list(inp.glob("*.jsonl")))
    cfg = ExactDedupConfig(content_getter=lambda d: d.text)
    t0 = time.perf_counter()
    stages = [
        [JsonlReader(str(inp)), GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter(),
         FineWebQualityFilter(), JsonlWriter(str(work / "filtered"), compression=None)],
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
    rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print(json.dumps({"seconds": secs, "kept": len(ids), "peak_rss_mb": rss / 1024}))
