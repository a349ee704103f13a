"""What curate may delete or replace: only what it recorded as its own.

Every folder a run writes (the output folder, the rejects folder, the work dir) is a *root* with an
ownership journal, ``<root>/.curate-owned``: one claim a line, sorted, written only by the main process
and before any worker writes what it claims. A claim is one of

- ``file <rel>``: one file (``pipeline.yaml`` in the work dir);
- ``tree <rel>``: a folder curate created and everything under it (``segments/``, ``stages/``);
- ``parts <dir>/<stem>``: the part files of one shard, ``<stem>.<ext>`` and ``<stem>-<k>.<ext>`` with a
  curate format extension (so a Spark ``part-00000-3f2a-c000.snappy.parquet`` or a user's
  ``part-00000-notes.txt`` next to them are never matched).

A claim is refused (a name clash) when its target already exists and is not owned, so a file curate did
not write is never replaced, and a leftover of a killed run (written under an existing claim) is always
recognised as curate's. Temporary files (``.tmp-<pid>-<name>``) are curate's when ``<name>`` is owned;
:meth:`OwnedRoot.clean_tmp` removes them at the start of the next run.

:func:`check_run_paths` holds the checks made before any work starts (``curate run`` and
``curate validate``): no root may overlap the input or another root, and a non-empty folder without a
journal is refused unless ``output.overwrite`` is set.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

from curate.core.errors import ConfigError, CurateError
from curate.core.lock import LOCK_NAME, flock_or_fail

JOURNAL = ".curate-owned"
TMP_RE = re.compile(r"^\.tmp-\d+-(?P<target>.+)$")
#: extensions of the part files curate writes (io/writers.py formats)
PART_EXTS = r"(?:jsonl|jsonl\.gz|jsonl\.zst|parquet)"
#: work-dir folders curate fills (spills, global-stage state, operator state, traces, embedding cache)
WORK_TREES = ("segments", "stages", "steps", "trace", "cache")
#: work-dir files curate writes (``.curate-lock`` is the run lock of :mod:`curate.core.lock`)
WORK_FILES = ("pipeline.yaml", "stats.json", "manifest.json")


def part_pattern(stem: str) -> re.Pattern[str]:
    """The names of the part files of one shard: ``<stem>.<ext>`` or ``<stem>-<k>.<ext>``."""
    return re.compile(rf"^{re.escape(stem)}(?:-\d+)?\.{PART_EXTS}$")


def _real(p: str | Path) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(p))))


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _input_targets(inputs: str | Sequence[str]) -> tuple[list[Path], list[Path]]:
    """(input files, input folders read recursively), as resolved real paths."""
    files: list[Path] = []
    folders: list[Path] = []
    for p in [inputs] if isinstance(inputs, str) else list(inputs):
        if os.path.isdir(p):
            folders.append(_real(p))
        elif glob.has_magic(p):
            from curate.io.shards import match_pattern  # loop-safe: glob's ** follows symlink loops

            files.extend(_real(f) for f in match_pattern(p) if os.path.isfile(f))
            if "**" in p:  # a recursive pattern reads whatever lands below its fixed prefix later
                prefix = p.split("**", 1)[0]
                folders.append(_real(prefix or "."))
        elif os.path.exists(p):
            files.append(_real(p))
    return files, folders


def check_run_paths(inputs: str | Sequence[str], output: str | Path, rejects: str | Path, work_dir: str | Path, *,
                    overwrite: bool = False) -> list[str]:
    """Every reason a run may not write where it is told to, as messages naming both paths (empty: fine).

    ``inputs`` is ``input.path`` as given (files, folders, globs). Refused: a root (output, rejects,
    work dir) that is or holds an input file or lies in an input folder; two roots that coincide or
    nest (rejects and output inside the work dir are fine outside its own folders); a root that is a
    file; a non-empty folder that holds no curate journal, unless ``overwrite``.
    """
    from curate.io.storage import is_uri, stage_dir

    problems: list[str] = []
    if is_uri(work_dir):
        problems.append(f"work_dir '{work_dir}' must be a local folder (it holds the run lock and markers)")
        return problems
    # a URI output is checked by curate.io.storage (its journal object); here its local stage stands in
    output = str(output) if not is_uri(output) else str(stage_dir(work_dir, str(output)))
    rejects = str(rejects) if not is_uri(rejects) else str(stage_dir(work_dir, str(rejects)))
    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    inputs = [i for i in inputs if not is_uri(i)]
    roots = {"output.path": _real(output), "rejects.path": _real(rejects), "work_dir": _real(work_dir)}
    in_files, in_folders = _input_targets(inputs)
    overlapping: set[str] = set()
    for name, root in roots.items():
        hit = next((f for f in in_files if _inside(f, root)), None)
        if hit is not None:
            overlapping.add(name)
            problems.append(f"{name} '{root}' {'is' if hit == root else 'contains'} the input file '{hit}': "
                            "curate would replace or re-read its own input; choose a folder outside the input")
            continue
        folder = next((d for d in in_folders if _inside(root, d)), None)
        if folder is not None:
            overlapping.add(name)
            problems.append(f"{name} '{root}' {'is' if folder == root else 'is inside'} the input folder "
                            f"'{folder}': the run would replace or re-read its own input; choose a folder "
                            "outside the input")
    out, rej, work = roots["output.path"], roots["rejects.path"], roots["work_dir"]
    if _inside(out, rej) or _inside(rej, out):
        problems.append(f"output.path '{out}' and rejects.path '{rej}' must be separate folders "
                        "(neither inside the other)")
    for name, root in (("output.path", out), ("rejects.path", rej)):
        if _inside(work, root):
            problems.append(f"work_dir '{work}' {'is' if work == root else 'is inside'} {name} '{root}'; "
                            "give the work dir its own folder")
        elif _inside(root, work):
            rel = root.relative_to(work).parts
            if rel and (rel[0] in WORK_TREES or rel[0] in WORK_FILES or rel[0] in (JOURNAL, LOCK_NAME)):
                problems.append(f"{name} '{root}' lies in curate's own '{rel[0]}' of the work dir '{work}'; "
                                "choose another folder")
    for name, root in roots.items():
        if name in overlapping:
            continue  # already refused; "not empty" would only repeat it
        if root.exists() and not root.is_dir():
            problems.append(f"{name} '{root}' is a file, not a folder")
        elif root.is_dir() and not (root / JOURNAL).exists() and not overwrite:
            entries = sorted(e.name for e in root.iterdir())
            if entries:
                shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
                problems.append(f"{name} '{root}' is not empty ({shown}) and was not created by curate; choose "
                                "a new or empty folder, or set output.overwrite: true to write next to these "
                                "files (curate never deletes a file it did not write)")
    return problems


class OwnedRoot:
    """One root folder and its ownership journal (see the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = _real(root)
        self.journal = self.root / JOURNAL
        self.claims: set[str] = set()
        self.claimed_now: set[str] = set()  # claims made or confirmed by this run
        self.clashes: list[str] = []
        self._fd: int | None = None
        self._by_stem: dict[str, dict[str, list[str]]] = {}
        if self.journal.exists():
            self.claims = set(read_journal(self.journal))

    # -- locking and the journal file ----------------------------------------------------------------
    def open(self, what: str) -> None:
        """Create the folder and journal and lock the journal for this run (one run per root)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.journal, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise CurateError(f"cannot create {what} '{self.root}': {e.strerror or e}") from None
        try:
            flock_or_fail(fd, f"{what} '{self.root}'")
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        # claims are made again under the lock (another run may have changed the journal meanwhile)
        self.claims = set(read_journal(self.journal))
        self.claimed_now = set()
        self.clashes = []
        self._by_stem = {}

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _write(self, claims: set[str]) -> None:
        data = "".join(f"{c}\n" for c in sorted(claims)).encode()
        if self._fd is None:
            raise RuntimeError(f"{self.journal} is not open")
        try:
            os.pwrite(self._fd, data, 0)
            os.ftruncate(self._fd, len(data))
            os.fsync(self._fd)
        except OSError as e:
            raise CurateError(f"cannot write '{self.journal}': {e.strerror or e}") from None

    # -- claims ----------------------------------------------------------------------------------------
    def _rel(self, path: str | Path) -> str | None:
        p = Path(os.path.abspath(path))
        try:
            return p.relative_to(self.root).as_posix()
        except ValueError:
            try:
                return _real(p).relative_to(self.root).as_posix()
            except ValueError:
                return None

    def owns(self, path: str | Path) -> bool:
        """Whether ``path`` is covered by a claim of this root."""
        return claims_cover(self.claims, self._rel(path))

    def claim_file(self, rel: str) -> None:
        self._claim(f"file {rel}", [self.root / rel])

    def adopt_file(self, rel: str) -> None:
        """Record a file this run has just created itself after checking the name was free (the run lock)."""
        self.claims.add(f"file {rel}")
        self.claimed_now.add(f"file {rel}")

    def claim_tree(self, rel: str) -> None:
        self._claim(f"tree {rel}", [self.root / rel])

    def claim_parts(self, folder: str, stem: str) -> None:
        d = self.root / folder
        if folder not in self._by_stem:  # one listing per folder and pass, not one per shard
            index: dict[str, list[str]] = {}
            for n in _names(d):
                for cand in _part_stems(n):
                    index.setdefault(cand, []).append(n)
            self._by_stem[folder] = index
        pat = part_pattern(stem)
        existing = [d / n for n in self._by_stem[folder].get(stem, []) if pat.match(n)]
        self._claim(f"parts {(Path(folder) / stem).as_posix()}", existing)

    def _claim(self, claim: str, targets: Iterable[Path]) -> None:
        self.claimed_now.add(claim)
        if claim in self.claims:
            return
        for t in targets:
            if t.exists() or t.is_symlink():
                if not self.owns(t):
                    self.clashes.append(f"'{t}' exists and was not written by curate: curate will not replace "
                                        "it; move it away or choose another folder")
        self.claims.add(claim)

    def commit(self) -> None:
        """Record the new claims, or raise a :class:`ConfigError` listing every name clash (nothing written)."""
        if self.clashes:
            raise ConfigError(self.clashes)
        self._write(self.claims)

    # -- cleaning ----------------------------------------------------------------------------------------
    def clean_tmp(self) -> list[Path]:
        """Remove ``.tmp-<pid>-<name>`` leftovers of killed runs whose ``<name>`` this root owns."""
        removed: list[Path] = []
        prefixes = {c.split(" ", 1)[1] for c in self.claims}

        def walk(d: Path, rel: str) -> None:
            for name in _names(d):
                p = d / name
                r = f"{rel}{name}"
                m = TMP_RE.match(name)
                if m and claims_cover(self.claims, f"{rel}{m['target']}"):
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink()
                    removed.append(p)
                elif p.is_dir() and not p.is_symlink() and (claims_cover(self.claims, r) or any(
                        x == r or x.startswith(r + "/") for x in prefixes)):
                    walk(p, r + "/")

        walk(self.root, "")
        return removed

    def sweep(self, vouched: set[str]) -> list[Path]:
        """After a complete run: delete owned part files no current marker vouches for (shards of an
        earlier, larger input; steps no longer in the pipeline), then keep only this run's claims."""
        removed: list[Path] = []
        folders = sorted({os.path.split(c[6:])[0] for c in self.claims if c.startswith("parts ")})
        for folder in folders:
            d = self.root / folder
            for name in _names(d):
                r = f"{folder}/{name}" if folder else name
                prefix = f"parts {folder}/" if folder else "parts "
                if r not in vouched and any(prefix + stem in self.claims for stem in _part_stems(name)):
                    (d / name).unlink()
                    removed.append(d / name)
        self.claims = set(self.claimed_now)
        self._write(self.claims)
        return removed


def claims_cover(claims: set[str], rel: str | None) -> bool:
    """Whether a relative path is covered by one of ``claims`` (a journal's lines)."""
    if rel is None:
        return False
    if f"file {rel}" in claims:
        return True
    parts = rel.split("/")
    for i in range(1, len(parts) + 1):
        if f"tree {'/'.join(parts[:i])}" in claims:
            return True
    folder, name = os.path.split(rel)
    return any(f"parts {folder + '/' if folder else ''}{stem}" in claims for stem in _part_stems(name))


_PART_NAME = re.compile(rf"^(?P<base>.+)\.{PART_EXTS}$")


def _part_stems(name: str) -> set[str]:
    """The stems a part file name may belong to ('part-00003-1.parquet': 'part-00003' or 'part-00003-1')."""
    m = _PART_NAME.match(name)
    if m is None:
        return set()
    return {m["base"], re.sub(r"-\d+$", "", m["base"])}


def read_journal(path: Path) -> list[str]:
    try:
        return [ln for ln in path.read_text().splitlines() if ln.strip()]
    except OSError:
        return []


_JOURNAL_CACHE: dict[tuple[str, int, int], set[str]] = {}


def owned(root: str | Path, path: str | Path) -> bool:
    """Whether ``path`` is recorded as curate's in the journal of ``root`` (used by workers before they
    delete or replace a file: a second check behind the main process's claims)."""
    r = _real(root)
    j = r / JOURNAL
    try:
        st = j.stat()
    except OSError:
        return False
    key = (str(j), st.st_mtime_ns, st.st_size)
    claims = _JOURNAL_CACHE.get(key)
    if claims is None:
        claims = set(read_journal(j))
        if len(_JOURNAL_CACHE) > 8:  # a run has three roots; old versions of a journal are dropped here
            _JOURNAL_CACHE.clear()
        _JOURNAL_CACHE[key] = claims
    try:
        rel = Path(os.path.abspath(path)).relative_to(r).as_posix()
    except ValueError:
        try:
            rel = _real(path).relative_to(r).as_posix()
        except ValueError:
            return False
    return claims_cover(claims, rel)


def _names(d: Path) -> list[str]:
    try:
        return sorted(os.listdir(d))
    except (FileNotFoundError, NotADirectoryError):
        return []
