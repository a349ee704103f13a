"""Run DataTrove's Gopher, C4 and FineWeb filters on the shared sample and write their decisions.

Run in an environment with datatrove (see benchmarks/README or env notes):
    python tests/golden/make_datatrove_golden.py ../shared/data tests/golden/datatrove_filters.jsonl
The golden file holds only keys and decisions (no text), so it can be committed.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from sample import build_sample  # noqa: E402


def main() -> None:
    from datatrove.data import Document
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    filters = {"gopher_quality": GopherQualityFilter(), "gopher_repetition": GopherRepetitionFilter(),
               "c4_quality": C4QualityFilter(), "fineweb_quality": FineWebQualityFilter()}
    with out.open("w") as f:
        f.write(json.dumps({"_meta": {"datatrove": version("datatrove"), "spacy": version("spacy")}}) + "\n")
        for d in build_sample(data):
            row = {"key": d["key"]}
            for name, flt in filters.items():
                doc = Document(text=d["text"], id=d["key"])
                res = flt.filter(doc)
                row[name] = "keep" if res is True else (res[1] if isinstance(res, tuple) else "drop")
                if name == "c4_quality" and row[name] == "keep":
                    row["c4_text_len"] = len(doc.text)
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
