"""Input shards: the unit of parallel work. Stable ids (sorted paths + byte ranges), so results and
output names never depend on the number of workers."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from curate.core.errors import ConfigError

_COMPRESSED = (".gz", ".zst", ".zstd")


def infer_format(path: str) -> str:
    p = path.lower()
    for ext in _COMPRESSED:
        if p.endswith(ext):
            p = p[: -len(ext)]
    if p.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if p.endswith((".parquet", ".pq")):
        return "parquet"
    if p.endswith(".txt"):
        return "text"
    if p.endswith((".warc", ".arc")):
        return "warc"
    raise ConfigError(f"cannot tell the format of '{path}' from its extension; set input.format")


@dataclass(frozen=True)
class Shard:
    index: int
    path: str
    format: str
    start: int = 0  # byte offset (jsonl) or file index (text)
    end: int = -1  # byte offset, -1 = end of file
    first_line: int = 1  # 1-based line number of the first line in the range
    files: tuple[str, ...] = ()  # text format: the .txt files of this shard

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}"


def expand_paths(paths: str | list[str]) -> list[str]:
    """Glob patterns, files and directories -> sorted unique file list. Missing inputs are errors."""
    out: list[str] = []
    for p in [paths] if isinstance(paths, str) else paths:
        if os.path.isdir(p):
            found = [str(f) for f in sorted(Path(p).rglob("*")) if f.is_file() and not f.name.startswith(".")]
        elif glob.has_magic(p):
            found = sorted(glob.glob(p, recursive=True))
        elif os.path.isfile(p):
            found = [p]
        else:
            raise ConfigError(f"input.path: file not found: '{p}'")
        if not found:
            raise ConfigError(f"input.path: '{p}' matches no file")
        out.extend(found)
    return sorted(set(out))


def _line_starts(path: str, size: int, target: int) -> list[tuple[int, int]]:
    """Split an uncompressed jsonl file into ~target-byte ranges ending at newlines.

    Returns [(start_byte, first_line)] for each range; lines are counted on the way, so each
    range knows its first line number (ids are ``file:line``).
    """
    starts = [(0, 1)]
    with open(path, "rb") as f:
        pos, line = 0, 1
        next_cut = target
        while True:
            block = f.read(1 << 24)
            if not block:
                break
            end = pos + len(block)
            while next_cut < end:
                nl = block.find(b"\n", max(next_cut - pos, 0))
                if nl < 0:
                    break
                cut = pos + nl + 1
                if cut >= size:
                    break
                starts.append((cut, line + block.count(b"\n", 0, nl + 1)))
                next_cut = cut + target
            line += block.count(b"\n")
            pos = end
    return starts


def plan_shards(paths: list[str], fmt: str | None, shard_bytes: int, files_per_shard: int = 1000) -> list[Shard]:
    """Turn input files into shards: one per file, byte ranges of large plain jsonl, groups of .txt files."""
    shards: list[Shard] = []
    texts: list[str] = []
    for path in paths:
        f = fmt or infer_format(path)
        if f == "text":
            texts.append(path)
            continue
        size = os.path.getsize(path)
        if f == "jsonl" and not path.lower().endswith(_COMPRESSED) and size > shard_bytes:
            starts = _line_starts(path, size, shard_bytes)
            for i, (s, line) in enumerate(starts):
                e = starts[i + 1][0] if i + 1 < len(starts) else -1
                shards.append(Shard(len(shards), path, f, s, e, line))
        else:
            shards.append(Shard(len(shards), path, f))
    for i in range(0, len(texts), files_per_shard):
        shards.append(Shard(len(shards), "", "text", files=tuple(texts[i : i + files_per_shard])))
    return shards
