"""Object storage (``s3://bucket/prefix/...`` and any other :mod:`pyarrow.fs` URI) for inputs and outputs.

Reading: an input path that is a URI is listed and read through ``pyarrow.fs`` (``FileSystem.from_uri``;
with ``storage_options`` an ``S3FileSystem`` built from them). Endpoint, region and credentials come from
the environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``,
``AWS_ENDPOINT_URL``, profiles: pyarrow's and the AWS SDK's own lookup), never from YAML:
``storage_options`` accepts only the non-secret :data:`STORAGE_OPTIONS`.

Writing: an output (or rejects) path that is a URI is *staged*: the run writes its part files, journal and
markers into a local folder of the work dir (``<work_dir>/remote/<hash of the URI>/``), exactly as for a
local output, and :func:`sync` uploads them when the run is complete. S3 has no rename, so each part is
uploaded under a temporary key (``.tmp-<pid>-<name>``) and copied to its final key only once complete
(:func:`put_atomic`): a failed upload never leaves a partial object at the final key. Beside the parts,
the object ``.curate-owned`` is the remote ownership journal: one ``<key>\\t<size>\\t<xxh3_128>`` line
per object curate uploaded. curate deletes or replaces only objects listed there, refuses a non-empty
prefix without a journal unless ``output.overwrite: true``, and skips objects whose size and hash are
unchanged (a resumed run uploads nothing).

The work dir, the run lock and the completion markers stay local: they are rewritten many times per
run, a lock needs an atomic create-or-fail that S3's API (as pyarrow exposes it) lacks, and keeping the
staged copy lets a rerun resume without downloading anything. Besides the work dir's lock, a run holds
one lock per remote prefix it writes (:func:`prefix_lock`: a file named by the URI under
``$CURATE_CACHE_DIR/locks``, default ``~/.cache/curate/locks``), so a second run on this machine writing
the same prefix is refused even from another work dir, as a second run on one local output folder is.
Both locks guard one machine: two machines must not write one prefix at the same time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from curate.core.errors import ConfigError, CurateError

if TYPE_CHECKING:
    from curate.core.lock import RunLock

log = logging.getLogger("curate.io")

#: the ``storage_options`` keys a pipeline file may set: none of them is a secret
STORAGE_OPTIONS = ("endpoint_override", "region", "scheme")
JOURNAL = ".curate-owned"
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_TMP = re.compile(r"^\.tmp-\d+-(?P<target>.+)$")
_PUT_BLOCK = 8 << 20


def is_uri(path: str | os.PathLike) -> bool:
    """Whether ``path`` names object storage (``s3://``, ``gs://``, ``hdfs://``...) rather than a local path
    (``file://`` URIs count as local)."""
    s = str(path)
    return bool(_URI.match(s)) and not s.startswith("file://")


def local_path(path: str) -> str:
    """``file:///x`` as ``/x``; anything else unchanged."""
    return path[len("file://"):] if path.startswith("file://") else path


def _options(options: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> dict[str, str]:
    opts = dict(options or {})
    bad = sorted(set(opts) - set(STORAGE_OPTIONS))
    if bad:
        raise ConfigError(f"storage_options: {', '.join(bad)} not allowed (only {', '.join(STORAGE_OPTIONS)}; "
                          "credentials come from the environment, never from the pipeline file)")
    return opts


_FS_CACHE: dict[tuple, Any] = {}


def filesystem(uri: str, options: Mapping[str, str] | Iterable[tuple[str, str]] | None = None) -> tuple[Any, str]:
    """``(pyarrow FileSystem, path inside it)`` for a URI. With ``options`` an ``s3://`` URI gets an
    ``S3FileSystem(**options)`` (credentials from the environment); otherwise ``FileSystem.from_uri``."""
    import pyarrow.fs as pafs

    opts = _options(options)
    scheme, _, rest = uri.partition("://")
    if scheme == "s3" and opts:
        key = ("s3", tuple(sorted(opts.items())))
        fs = _FS_CACHE.get(key)
        if fs is None:
            fs = _FS_CACHE[key] = pafs.S3FileSystem(**opts)
        return fs, rest
    if opts:
        raise ConfigError(f"storage_options apply to s3:// URIs only, not '{uri}'")
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path


def _join(uri: str, rel: str) -> str:
    return uri.rstrip("/") + "/" + rel


def open_input(path: str, options: Mapping[str, str] | Iterable[tuple[str, str]] | None = None, *,
               seekable: bool = False) -> IO[bytes]:
    """The raw bytes of a local file or object (no decompression: the readers decode, counting damage).
    ``seekable``: random access (parquet footers)."""
    if not is_uri(path):
        return open(local_path(path), "rb")
    fs, p = filesystem(path, options)
    return fs.open_input_file(p) if seekable else fs.open_input_stream(p, compression=None)


def read_bytes(path: str, options: Mapping[str, str] | Iterable[tuple[str, str]] | None = None) -> bytes:
    with open_input(path, options) as f:
        return f.read()


def stat(path: str, options: Mapping[str, str] | Iterable[tuple[str, str]] | None = None) -> tuple[int, int]:
    """``(size, mtime_ns)`` of a local file or object (an object's mtime is its Last-Modified; pyarrow's
    ``FileInfo`` exposes no ETag, so a remote input's fingerprint is its size and mtime)."""
    if not is_uri(path):
        st = os.stat(local_path(path))
        return st.st_size, st.st_mtime_ns
    import pyarrow.fs as pafs

    fs, p = filesystem(path, options)
    info = fs.get_file_info(p)
    if info.type != pafs.FileType.File:
        raise ConfigError(f"input.path: not an object: '{path}'")
    return int(info.size or 0), int(info.mtime_ns or 0)


def expand_uri(pattern: str, options: Mapping[str, str] | Iterable[tuple[str, str]] | None,
               regex_for: Any) -> list[str]:
    """The objects an input URI names: one object, every object under a prefix, or those a glob matches
    (``*``/``?`` within one path component, ``**`` across them: the local rules). Hidden names skipped.
    ``regex_for(parts)`` builds the match regex of the pattern's components (from :mod:`curate.io.shards`)."""
    scheme = pattern.partition("://")[0]
    try:
        return _expand_uri(pattern, scheme, *filesystem(pattern, options), regex_for)
    except OSError as e:  # unreachable endpoint, no such bucket, no permission: a config problem, named
        raise ConfigError(f"input.path: cannot list '{pattern}': {e}") from None


def _expand_uri(pattern: str, scheme: str, fs: Any, path: str, regex_for: Any) -> list[str]:
    import glob

    import pyarrow.fs as pafs

    parts = path.split("/")
    fixed = 0
    while fixed < len(parts) and not glob.has_magic(parts[fixed]):
        fixed += 1
    if fixed == len(parts):
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            return [pattern]
        if info.type != pafs.FileType.Directory:
            raise ConfigError(f"input.path: no object or prefix '{pattern}'")
        base, regex = path.rstrip("/"), None
    else:
        base, regex = "/".join(parts[:fixed]), regex_for(parts[fixed:])
    out = []
    for info in fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True)):
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(base):].lstrip("/")
        if any(c.startswith(".") for c in rel.split("/")):
            continue
        if regex is None or regex.fullmatch(rel):
            out.append(f"{scheme}://{info.path}")
    return sorted(out)


# -- output ------------------------------------------------------------------------------------------

def stage_dir(work_dir: str | Path, uri: str) -> Path:
    """The local folder a remote output is written to before upload; named by the URI, so pointing the
    output elsewhere gets a fresh stage (and a fresh fingerprint: nothing is skipped by mistake)."""
    return Path(work_dir) / "remote" / hashlib.sha256(uri.encode()).hexdigest()[:12]


def lock_dir() -> Path:
    """Where the locks of remote prefixes live: ``$CURATE_CACHE_DIR/locks``, else ``~/.cache/curate/locks``
    (the cache root of :mod:`curate.models.causal_lm`)."""
    root = os.environ.get("CURATE_CACHE_DIR")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "curate") / "locks"


def prefix_lock(uri: str, what: str = "output.path") -> RunLock:
    """The run lock of one remote prefix on this machine (not yet taken: :meth:`RunLock.acquire`): a file
    in :func:`lock_dir` named by the URI (a trailing ``/`` does not count), holding the holder's pid, host
    and start time. ``what`` names the prefix in the error a second run gets (``output.path``)."""
    from curate.core.lock import RunLock

    name = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16] + ".lock"
    return RunLock(lock_dir(), name=name, what=f"{what} '{uri}'")


def put_atomic(fs: Any, key: str, chunks: Iterable[bytes]) -> int:
    """Upload ``chunks`` to ``key`` so that ``key`` exists only complete: written to a temporary key
    beside it, then copied (S3 CopyObject, server side) and the temporary key deleted. Any failure
    deletes the temporary key and leaves ``key`` as it was. Returns the bytes written."""
    folder, name = key.rsplit("/", 1)
    tmp = f"{folder}/.tmp-{os.getpid()}-{name}"
    n = 0
    try:
        with fs.open_output_stream(tmp, compression=None) as out:
            for c in chunks:
                out.write(c)
                n += len(c)
        fs.copy_file(tmp, key)
    finally:
        try:
            fs.delete_file(tmp)
        except (OSError, FileNotFoundError):
            pass  # never created (the stream failed before its first byte)
    return n


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while block := f.read(_PUT_BLOCK):
            yield block


def _hash(path: Path) -> str:
    """xxh3_128 of a staged file (the hash :func:`curate.core.plan.file_hash` uses for inputs)."""
    import xxhash

    h = xxhash.xxh3_128()
    for block in _file_chunks(path):
        h.update(block)
    return h.hexdigest()


@dataclass
class RemoteRoot:
    """One remote output prefix and its journal (see the module docstring)."""

    uri: str
    options: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.fs, self.base = filesystem(self.uri, self.options)
        self.base = self.base.rstrip("/")

    def listing(self) -> dict[str, int]:
        """``{relative key: size}`` of every object under the prefix."""
        import pyarrow.fs as pafs

        sel = pafs.FileSelector(self.base, recursive=True, allow_not_found=True)
        return {i.path[len(self.base):].lstrip("/"): int(i.size or 0)
                for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.File}

    def journal(self) -> dict[str, tuple[str, str]]:
        """``{relative key: (size, hash)}`` recorded as curate's (empty without a journal)."""
        try:
            with self.fs.open_input_stream(f"{self.base}/{JOURNAL}", compression=None) as f:
                text = f.read().decode()
        except (OSError, FileNotFoundError):
            return {}
        out = {}
        for ln in text.splitlines():
            if ln.strip():
                rel, size, h = ln.split("\t")
                out[rel] = (size, h)
        return out

    def _write_journal(self, claims: dict[str, tuple[str, str]]) -> None:
        data = "".join(f"{k}\t{s}\t{h}\n" for k, (s, h) in sorted(claims.items())).encode()
        put_atomic(self.fs, f"{self.base}/{JOURNAL}", [data])

    def problems(self, name: str, *, overwrite: bool) -> list[str]:
        """Why a run may not write here (empty: fine): a non-empty prefix without a journal."""
        try:
            have = self.listing()
        except OSError as e:
            return [f"{name} '{self.uri}' cannot be listed: {e}"]
        if have and JOURNAL not in have and not overwrite:
            shown = ", ".join(sorted(have)[:5]) + (", ..." if len(have) > 5 else "")
            return [f"{name} '{self.uri}' is not empty ({shown}) and was not created by curate; choose a new "
                    "or empty prefix, or set output.overwrite: true to write next to these objects (curate "
                    "never deletes an object it did not write)"]
        return []

    def sync(self, stage: Path) -> dict[str, list[str]]:
        """Make the prefix hold what ``stage`` holds: upload new or changed files, delete objects curate
        uploaded earlier that the stage no longer has, never touch another object. Raises a
        :class:`ConfigError` before writing anything if a file would replace a foreign object."""
        local = {}
        for dirpath, _, files in os.walk(stage):
            for f in files:
                p = Path(dirpath) / f
                rel = p.relative_to(stage).as_posix()
                if f in (JOURNAL, ".curate-lock") or _TMP.match(f):
                    continue
                local[rel] = p
        have = self.listing()
        claims = self.journal()
        clashes = [r for r in sorted(local) if r in have and r not in claims]
        if clashes:
            raise ConfigError([f"'{_join(self.uri, r)}' exists and was not written by curate: curate will not "
                               "replace it; move it away or choose another prefix" for r in clashes])
        stamps = {r: (str(p.stat().st_size), _hash(p)) for r, p in local.items()}
        upload = [r for r in sorted(local) if claims.get(r) != stamps[r] or have.get(r) != int(stamps[r][0])]
        delete = [r for r in sorted(claims) if r not in local]
        stale_tmp = [r for r in have if (m := _TMP.match(r.rsplit("/", 1)[-1]))
                     and (r.rsplit("/", 1)[0] + "/" if "/" in r else "") + m["target"] in claims]
        if upload:  # claim first (pending stamps), so a crash mid-upload leaves objects curate may replace
            self._write_journal({**claims, **{r: ("-", "-") for r in upload}})
        for r in upload:
            put_atomic(self.fs, f"{self.base}/{r}", _file_chunks(local[r]))
        for r in delete + stale_tmp:
            if r in have:
                self.fs.delete_file(f"{self.base}/{r}")
        if upload or delete or not claims and JOURNAL not in have:
            self._write_journal({r: stamps[r] for r in local})
        if upload or delete:
            log.info("synced %s: %d uploaded, %d deleted", self.uri, len(upload), len(delete))
        return {"uploaded": upload, "deleted": delete}


def check_remote(name: str, uri: str, options: Mapping[str, str] | None, *, overwrite: bool) -> list[str]:
    """The preflight problems of one remote root (for ``curate validate`` and the run)."""
    try:
        return RemoteRoot(uri, dict(options or {})).problems(name, overwrite=overwrite)
    except (OSError, ValueError) as e:
        return [f"{name} '{uri}': {e}"]


class SyncError(CurateError):
    """An upload to object storage failed (the staged output is kept; rerun to retry)."""
