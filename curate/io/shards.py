"""Input shards: the unit of parallel work. Stable ids (sorted paths + byte ranges), so results and
output names never depend on the number of workers."""

from __future__ import annotations

import glob
import logging
import os
import re
import stat
from dataclasses import dataclass

from curate.core.errors import ConfigError

_COMPRESSED = (".gz", ".zst", ".zstd")
log = logging.getLogger("curate.io")
_WARNED: set[str] = set()


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
    #: ``input.storage_options`` of a URI input (workers open the object with them)
    storage: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}"


def _walk(root: str) -> list[str]:
    """Every file under ``root``, hidden names skipped; directory symlinks are followed once each (a
    symlink loop or a link back to an ancestor is entered once, never 40 levels deep)."""
    out: list[str] = []
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(os.path.join(dirpath, f) for f in filenames if not f.startswith("."))
    return out


def _component_regex(part: str) -> str:
    """One path component of a glob pattern as a regex (``*`` and ``?`` never cross a ``/``, and never
    match a leading dot, as :mod:`glob` does)."""
    out, i = [], 0
    while i < len(part):
        c = part[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = part.find("]", i + 2 if part[i + 1 : i + 2] in ("!", "]") else i + 1)
            if j < 0:
                out.append(re.escape(c))
            else:
                body = part[i + 1 : j].replace("\\", "\\\\")
                out.append("[^" + body[1:] + "]" if body.startswith("!") else "[" + body + "]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    lead = "" if part.startswith(".") else "(?!\\.)"
    return lead + "".join(out)


def _recursive_glob(pattern: str) -> list[str]:
    """``**`` patterns without :func:`glob.glob`, which follows every directory symlink again and again
    (a loop under ``data/**`` yielded one file 41 times; two loops would enumerate 2**40 paths): walk
    the fixed prefix once per directory and match the rest."""
    parts = pattern.split("/")
    fixed = 0
    while fixed < len(parts) and not glob.has_magic(parts[fixed]):
        fixed += 1
    base = "/".join(parts[:fixed]) or ("/" if pattern.startswith("/") else ".")
    if not os.path.isdir(base):
        return []
    regex = pattern_regex(parts[fixed:])
    out = []
    for f in _walk(base):
        rel = os.path.relpath(f, base)
        if regex.fullmatch(rel.replace(os.sep, "/")):
            out.append(f)
    return out


def pattern_regex(rest: list[str]) -> re.Pattern[str]:
    """The regex of a pattern's components after its fixed prefix (``**`` spans components)."""
    rx = "".join("(?:[^/]+/)*" if p == "**" else _component_regex(p) + "/" for p in rest)
    return re.compile(rx + "[^/]+" if rest[-1] == "**" else rx[:-1])


def match_pattern(pattern: str) -> list[str]:
    """The paths a glob pattern matches, ``**`` walked loop-safe (see :func:`_recursive_glob`)."""
    return _recursive_glob(pattern) if "**" in pattern else glob.glob(pattern)


def _file_key(path: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of a regular file (symlinks followed), or None for anything else: folders, FIFOs,
    devices, sockets and dangling links are not documents (opening a FIFO would block the run)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None


def expand_paths(paths: str | list[str], storage_options: dict[str, str] | None = None) -> list[str]:
    """Glob patterns, files and directories -> sorted list of distinct regular files.

    A file reached through several names (``a.jsonl`` and ``./a.jsonl``, a symlink, a hard link, a
    symlink loop under ``**``) is read once, under its first name in sorted order, so shard ids stay
    stable. Folders, FIFOs and devices matched by a pattern or found in a folder are skipped with a
    warning naming them; naming one directly, or a missing input, is an error. URIs (``s3://...``) are
    listed through :mod:`curate.io.storage` with ``storage_options``.
    """
    from curate.io.storage import expand_uri, is_uri, local_path

    found: list[str] = []
    remote: list[str] = []
    for p in [paths] if isinstance(paths, str) else paths:
        if is_uri(p):
            matches = expand_uri(p, storage_options, pattern_regex)
            if not matches:
                raise ConfigError(f"input.path: '{p}' matches no object")
            remote.extend(matches)
            continue
        p = local_path(p)
        if os.path.isdir(p):
            matches = _walk(p)
        elif glob.has_magic(p):
            matches = match_pattern(p)
        elif os.path.lexists(p):
            if _file_key(p) is None:
                raise ConfigError(f"input.path: '{p}' is not a regular file (a FIFO, device or dangling link)")
            matches = [p]
        else:
            raise ConfigError(f"input.path: file not found: '{p}'")
        if not matches:
            raise ConfigError(f"input.path: '{p}' matches no file")
        found.extend(matches)
    if remote and not found:
        return sorted(set(remote))
    out: list[str] = []
    seen: set[tuple[int, int]] = set()
    for f in sorted({os.path.normpath(f) for f in found}):
        key = _file_key(f)
        if key is None:
            if not os.path.isdir(f) and f not in _WARNED:  # a folder matched by a glob is no document file
                _WARNED.add(f)  # once per process: the input is expanded several times per run
                log.warning("skipping input '%s': not a regular file", f)
            continue
        if key not in seen:
            seen.add(key)
            out.append(f)
    if not out:
        raise ConfigError(f"input.path: {paths!r} matches no regular file")
    return out + sorted(set(remote) - set(out))


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


def plan_shards(paths: list[str], fmt: str | None, shard_bytes: int, files_per_shard: int = 1000, *,
                storage_options: dict[str, str] | None = None) -> list[Shard]:
    """Turn input files into shards: one per file, byte ranges of large plain jsonl, groups of .txt files.
    An object (URI) is one shard whatever its size: cutting it at newlines would read it twice."""
    from curate.io.storage import is_uri

    st = tuple(sorted((storage_options or {}).items()))
    shards: list[Shard] = []
    texts: list[str] = []
    for path in paths:
        f = fmt or infer_format(path)
        if f == "text":
            texts.append(path)
            continue
        if is_uri(path):
            shards.append(Shard(len(shards), path, f, storage=st))
            continue
        size = os.path.getsize(path)
        # a .json file may hold one JSON array, which cannot be cut at newlines
        if f == "jsonl" and path.lower().endswith((".jsonl", ".ndjson")) and size > shard_bytes:
            starts = _line_starts(path, size, shard_bytes)
            for i, (s, line) in enumerate(starts):
                e = starts[i + 1][0] if i + 1 < len(starts) else -1
                shards.append(Shard(len(shards), path, f, s, e, line))
        else:
            shards.append(Shard(len(shards), path, f))
    for i in range(0, len(texts), files_per_shard):
        shards.append(Shard(len(shards), "", "text", files=tuple(texts[i : i + files_per_shard]), storage=st))
    return shards
