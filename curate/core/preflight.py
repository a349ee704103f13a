"""Preflight: what ``curate run`` would reject, found before any work and reported all at once.

``curate validate`` and every run (``Pipeline.run``, so ``curate run`` too) call :func:`check_pipeline`
after the config itself validated. It checks, naming the step and key of each problem:

* the input: the first rows of every input file are peeked (jsonl / .gz / .zst lines, the parquet
  schema; ``.txt`` files have no fields), and ``input.text_field`` must be in them;
* the column chain: each step's :meth:`~curate.core.operator.Operator.needs` must be provided by the
  input or by an earlier step's :meth:`~curate.core.operator.Operator.adds` (a missing ``embedding`` or
  label column is found here, not inside ``fit`` after the stages before it ran);
* files named by parameters: every field marked ``json_schema_extra={"path": ...}`` in an operator's
  ``Params`` (``file``: must exist; ``input``: a file, folder or glob like ``input.path``; ``model``: a
  local model, checked when the value looks like a path, else a name a library resolves);
* missing optional extras (the pip extra to install is named);
* output / rejects / work-dir overlaps with the input or each other, and non-empty folders curate did not
  create (the run engine's own check, :func:`curate.core.ownership.check_run_paths`).

Name clashes. curate never overwrites or drops a user field. A field of the input is refused before work
when it is named like a column a step of this pipeline adds (``n_words``, ``dup_of``, ``ppl`` ...), like a
column of the rejects sink (``step``, ``reason``, ``score``, ``threshold``), starts with ``__`` (curate's
internal columns, never written), or is ``text`` / ``id`` while another field is mapped to them
(``id_field: null`` is an explicit choice to ignore the ``id`` field and is allowed). The
message names the field and suggests ``input.rename: {field: new_name}``. The same rule is checked on
every batch the run reads (:func:`check_input_batch`), so a clashing field that first appears deep in an
input file stops the run with an error naming the file and the field; finished shards are kept.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from curate.core.errors import ConfigError, CurateError, InputError, PreflightError
from curate.core.operator import REJECT_COLUMNS, UID, Operator

if TYPE_CHECKING:
    from curate.core.pipeline import Pipeline
    from curate.io.readers import InputSpec

log = logging.getLogger("curate.preflight")

#: rows peeked per input file, and the bytes read at most to find them (a book per line is ~1 MB)
PEEK_ROWS = 20
PEEK_BYTES = 16 << 20
#: input files peeked at most (the first ones in shard order); the runtime guard covers the rest
PEEK_FILES = 1000
_MODEL_SUFFIXES = (".gguf", ".bin", ".ftz", ".arpa", ".safetensors", ".pt", ".model", ".json")


@dataclass
class InputPeek:
    """Fields seen in the first rows of each peeked input file (files that could not be peeked are absent)."""

    fields: dict[str, list[str]] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def all_fields(self) -> set[str]:
        return {f for fs in self.fields.values() for f in fs}


def _peek_jsonl(path: str, rows: int, storage: dict[str, str] | None = None) -> tuple[list[str], int, bool] | None:
    """(fields in order of first appearance, rows parsed, whether a row could not be parsed) of the first ``rows`` JSON objects, or None when no
    object could be read (damaged or empty file: the reader counts those)."""
    from curate.io.readers import open_binary

    seen: dict[str, None] = {}
    n = read = 0
    unreadable = False
    try:
        with open_binary(path, storage) as f:
            for line in f:
                read += len(line)
                if read > PEEK_BYTES or n >= rows:
                    break
                try:
                    obj = json.loads(line)
                except (ValueError, RecursionError):  # bad or too deeply nested rows: the reader counts them
                    unreadable = True
                    continue
                # a .json file may hold one array of documents on its first line
                for doc in obj[:rows] if isinstance(obj, list) else [obj]:
                    if isinstance(doc, dict):
                        n += 1
                        seen.update(dict.fromkeys(doc))
    except (OSError, EOFError, ValueError) as e:  # truncated .gz/.zst, unreadable: the reader reports it
        log.debug("preflight: cannot peek %s: %s", path, e)
    return (list(seen), n, unreadable) if n else None


def _peek_parquet(path: str, storage: dict[str, str] | None = None) -> tuple[list[str], int, bool] | None:
    try:
        import pyarrow.parquet as pq

        from curate.io.storage import open_input

        with open_input(path, storage, seekable=True) as f:
            schema = pq.read_schema(f)
    except Exception as e:  # noqa: BLE001 - a damaged file is the reader's to report, with its name
        log.debug("preflight: cannot read the parquet schema of %s: %s", path, e)
        return None
    return list(schema.names), 1, False


def peek_input(spec: InputSpec, *, rows: int = PEEK_ROWS, max_files: int = PEEK_FILES) -> InputPeek:
    """Fields of the first ``rows`` rows of each input file (up to ``max_files``), and text-field problems."""
    from curate.io.shards import infer_format

    out = InputPeek()
    try:
        files = spec.files()
    except CurateError:
        return out  # a missing input is reported by the config check
    rename: Mapping[str, str] = getattr(spec, "rename", None) or {}
    for path in files[:max_files]:
        try:
            fmt = spec.format or infer_format(path)
        except ConfigError as e:
            out.problems.append(f"input: {e.problems[0]}")
            continue
        if fmt == "jsonl":
            got = _peek_jsonl(path, rows, dict(getattr(spec, "storage_options", {}) or {}))
        elif fmt == "parquet":
            got = _peek_parquet(path, dict(getattr(spec, "storage_options", {}) or {}))
        else:
            continue  # .txt: the reader makes id and text; there are no user fields
        if got is None:
            continue
        names, n, unreadable = got
        out.fields[path], out.rows[path] = names, n
        renamed = {rename.get(f, f) for f in names}
        # where the peek met rows it could not parse (the reader counts those), one of them may hold the
        # text: an absent text field is then the reader's to report
        if spec.text_field not in names and spec.text_field not in renamed and not unreadable:
            what = "schema" if fmt == "parquet" else f"first {n} row(s)"
            out.problems.append(f"input.text_field: no field '{spec.text_field}' in the {what} of {path} "
                                f"(fields: {', '.join(names) or 'none'}); set input.text_field")
    return out


def user_fields(spec: InputSpec, raw: Iterable[str]) -> set[str]:
    """The input fields that become columns of a batch (after ``input.rename``), besides ``id`` and ``text``."""
    rename: Mapping[str, str] = getattr(spec, "rename", None) or {}
    names = {rename.get(f, f) for f in raw}
    return names - {spec.text_field, spec.id_field or "", "id", "text"}


def reserved_columns(steps: Iterable[Operator]) -> dict[str, str]:
    """Column name -> who writes it: every column a step adds and the rejects sink's columns."""
    out = {c: "the rejects sink" for c in REJECT_COLUMNS}
    for op in steps:
        for name in op.adds():
            out.setdefault(name, f"step '{op.step_name}'")
    return out


def _rename_hint(name: str) -> str:
    return f"rename it in the input: `input: {{rename: {{{name}: {name.lstrip('_') or 'field'}_orig}}}}`"


def clash_problems(spec: InputSpec, peek: InputPeek, steps: list[Operator]) -> list[str]:
    """Input fields that a step, the rejects sink or curate's internals would overwrite or drop."""
    reserved = reserved_columns(steps)
    rename: Mapping[str, str] = getattr(spec, "rename", None) or {}
    problems: list[str] = []
    reported: set[str] = set()
    for path, raw in peek.fields.items():
        names = [rename.get(f, f) for f in raw]
        for name in names:
            if name in reported:
                continue
            msg = None
            if name == "text" and spec.text_field != "text":
                msg = f"input.text_field is '{spec.text_field}', so curate's text column would replace it"
            elif name == "id" and spec.id_field not in ("id", None):  # id_field: null says "ignore the ids"
                msg = f"input.id_field is {spec.id_field!r}, so curate's id column would replace it"
            elif name in (spec.text_field, spec.id_field, "id", "text"):
                continue
            elif name.startswith("__"):
                msg = "names starting with '__' are curate's internal columns (never written)"
            elif name in reserved:
                msg = f"{reserved[name]} adds a column of this name and would overwrite it"
            if msg is not None:
                reported.add(name)
                problems.append(f"input: field '{name}' of {path} clashes with curate's columns: {msg}; "
                                + _rename_hint(name))
    return problems


def chain_problems(steps: list[Operator], available: set[str], *, known: bool) -> list[str]:
    """Steps whose needed columns neither the input (``available``) nor an earlier step provides.

    ``known``: the input fields were peeked; when not, columns a step needs may still come from the input,
    so only the chain between steps is checked."""
    have = {"id", "text", *available}
    problems: list[str] = []
    for i, op in enumerate(steps):
        for col in op.needs():
            if col in have:
                continue
            later = _added_later(steps, i, col)
            if not known and later is None:
                continue  # the input was not peeked: it may hold the column
            hint = op.need_hint(col)
            where = f"steps[{i}].{op.name}"
            msg = (f"{where}: needs column '{col}', which neither the input nor an earlier step provides"
                   + (f" (step '{later}' adds it, but after this one)" if later else "")
                   + (f"; {hint}" if hint else ""))
            problems.append(msg)
        for name, c in op.adds().items():
            if not c.rejects_only:
                have.add(name)
    return problems


def output_column_problems(columns: list[str] | None, steps: list[Operator], available: set[str]) -> list[str]:
    """``output.columns`` entries that neither the input nor any step provides (written as nothing today)."""
    if not columns:
        return []
    have = {"id", "text", *available, *(c for op in steps for c, d in op.adds().items() if not d.rejects_only)}
    return [f"output.columns: no column '{c}': neither an input field nor a column a step adds"
            for c in columns if c not in have]


def _added_later(steps: list[Operator], i: int, col: str) -> str | None:
    for op in steps[i + 1:]:
        if col in op.adds():
            return op.step_name
    return None


def _looks_like_path(value: str) -> bool:
    return (value.startswith(("/", "./", "../", "~", ".\\")) or value.lower().endswith(_MODEL_SUFFIXES)
            or value.count("/") > 1)


def path_problems(steps: list[Operator]) -> list[str]:
    """Files named by parameters (fields marked ``json_schema_extra={"path": kind}``) that do not exist."""
    from curate.io.shards import expand_paths

    problems: list[str] = []
    for i, op in enumerate(steps):
        for fname, f in type(op.params).model_fields.items():
            extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
            kind = extra.get("path")
            value = getattr(op.params, fname, None)
            if kind is None or value is None:
                continue
            values = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else []
            key = f"steps[{i}].{op.name}.{fname}"
            if kind == "input":
                try:
                    expand_paths([str(v) for v in values])
                except ConfigError as e:
                    problems.append(f"{key}: {e.problems[0].removeprefix('input.path: ')}")
                continue
            for v in map(str, values):
                p = Path(v).expanduser()
                if kind == "file" and not p.is_file():
                    problems.append(f"{key}: {'is a folder, not a file' if p.is_dir() else 'file not found'}: '{v}'")
                elif kind == "model" and not v.startswith("pkg:") and not p.exists() and _looks_like_path(v):
                    problems.append(f"{key}: model not found: '{v}' (no such local file or folder)")
    return problems


def dependency_problems(steps: list[Operator]) -> list[str]:
    problems = []
    for i, op in enumerate(steps):
        try:
            op.check_dependencies()
        except CurateError as e:
            problems.append(f"steps[{i}].{op.name}: {e}")
    return problems


def run_path_problems(p: Pipeline) -> list[str]:
    """Output, rejects and work-dir overlaps with the input or each other, and non-empty folders curate did
    not create: the run engine's own rule (:func:`curate.core.ownership.check_run_paths`), so validate and
    run refuse the same things."""
    from curate.core.ownership import check_run_paths

    assert p.input is not None and p.output is not None
    from curate.io.storage import check_remote, is_uri

    problems = check_run_paths(p.input.path, p.output.path, p.rejects_spec().path, p.work_dir,
                               overwrite=p.output.overwrite)
    for name, sp in (("output.path", p.output), ("rejects.path", p.rejects_spec())):
        if is_uri(sp.path):
            problems += check_remote(name, sp.path, sp.storage_options, overwrite=p.output.overwrite)
    return problems


def preflight(p: Pipeline) -> list[str]:
    """Every problem :func:`check_pipeline` would raise, as messages naming the step and key."""
    assert p.input is not None
    steps = p.steps
    peek = peek_input(p.input)
    problems = list(peek.problems)
    fields = set().union(*(user_fields(p.input, fs) for fs in peek.fields.values())) if peek.fields else set()
    problems += clash_problems(p.input, peek, steps)
    problems += chain_problems(steps, fields, known=bool(peek.fields))
    if peek.fields and p.output is not None:
        problems += output_column_problems(p.output.columns, steps, fields)
    problems += path_problems(steps)
    problems += dependency_problems(steps)
    problems += run_path_problems(p)
    return sorted(problems, key=_step_order)


def _step_order(problem: str) -> int:
    """Input and path problems first, then step problems in step order (a stable sort keeps the rest)."""
    if problem.startswith("steps["):
        try:
            return 1 + int(problem[6:problem.index("]")])
        except ValueError:
            return 0
    return 0


def check_pipeline(p: Pipeline) -> None:
    """Raise one :class:`PreflightError` (a ConfigError) listing every preflight problem (nothing when the
    pipeline can run)."""
    problems = preflight(p)
    if problems:
        raise PreflightError(problems)


def check_input_batch(batch: pl.DataFrame, reserved: Mapping[str, str], where: str) -> None:
    """The runtime half of the name rule: a batch fresh from the reader whose user fields clash with a
    reserved column (or start with ``__``) stops the run, naming the file and the field, before any step
    overwrites it. Costs one pass over the column names per batch."""
    for name in batch.columns:
        if name in ("id", "text", UID):
            continue
        if name.startswith("__") or name in reserved:
            who = "curate's internal columns" if name.startswith("__") else reserved[name]
            raise InputError(f"{where}: input field '{name}' clashes with a column of {who} and would be "
                             f"overwritten; {_rename_hint(name)} (finished shards are kept; rerun to resume)")
