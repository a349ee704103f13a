"""Cut a pipeline into segments at its global stages, and fingerprint each for resume.

Segment 0 reads the input; segment k > 0 reads the spill of segment k-1 and starts with the apply of
the global stage fitted on it. The last segment writes the output; the others spill to the work dir.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

from curate.core.operator import GlobalStage, Operator
from curate.io.readers import InputSpec
from curate.io.writers import OutputSpec


@dataclass
class Segment:
    index: int
    ops: list[Operator]
    stage: GlobalStage | None  # the global stage whose apply opens this segment (None for segment 0)
    last: bool
    fingerprint: str = ""
    stage_fingerprint: str = ""
    step_indices: list[int] = field(default_factory=list)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def input_fingerprint(spec: InputSpec) -> dict:
    files = spec.files()
    return {
        "spec": spec.model_dump(mode="json"),
        "files": [[f, os.path.getsize(f), int(os.path.getmtime(f))] for f in files],
    }


def _file_stamps(value) -> list:
    """Size and mtime of every existing file a parameter names (models, word lists, target sets), so
    editing such a file reruns the step like a parameter change does."""
    if isinstance(value, str):
        try:
            if os.path.isfile(value):
                return [[value, os.path.getsize(value), int(os.path.getmtime(value))]]
        except (OSError, ValueError):
            return []
        return []
    if isinstance(value, dict):
        return [s for v in value.values() for s in _file_stamps(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _file_stamps(v)]
    return []


def _op_key(op: Operator) -> list:
    cfg = op.config()
    return [op.name, cfg, _file_stamps(cfg)]


def plan_segments(inp: InputSpec, steps: list[Operator], output: OutputSpec, seed: int) -> list[Segment]:
    segments: list[Segment] = []
    current: list[Operator] = []
    idx: list[int] = []
    stage: GlobalStage | None = None
    for i, op in enumerate(steps):
        if isinstance(op, GlobalStage):
            segments.append(Segment(len(segments), current, stage, False, step_indices=idx))
            current, idx, stage = [op], [i], op
        else:
            current.append(op)
            idx.append(i)
    segments.append(Segment(len(segments), current, stage, True, step_indices=idx))
    chain: list = [input_fingerprint(inp), seed]
    for seg in segments:
        if seg.stage is not None:
            seg.stage_fingerprint = _digest(chain + ["fit", _op_key(seg.stage)])
        chain = chain + [_op_key(op) for op in seg.ops]
        tail = [output.model_dump(mode="json")] if seg.last else []
        seg.fingerprint = _digest(chain + tail)
    return segments
