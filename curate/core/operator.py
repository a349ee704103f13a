"""Operator base classes: the whole contract an operator author needs.

Three kinds, one shape (see ``docs`` in the README, "Adding an operator"):

* :class:`Mapper` — ``map(batch) -> batch``: adds or rewrites columns (normalisation, scores).
* :class:`Filter` — ``score(batch) -> batch`` adds evidence columns; ``rules()`` says when a row is
  dropped. The base machinery (:mod:`curate.core.step`) splits kept/rejected rows, records the first
  rule that fired with its score and threshold in the rejects sink, and counts everything.
* :class:`GlobalStage` — needs the whole dataset: ``fit(ctx)`` reads the spilled output of the steps
  before it (and may spill its own files under ``ctx.scratch_dir``), saves its state under
  ``ctx.state_dir``; ``apply(batch)`` then runs per batch like a filter (it may declare ``rules()``).

Parameters are a pydantic model named ``Params`` on the class (subclass :class:`OpParams`), so YAML,
``curate ops`` and Python keyword arguments all validate the same way. Every field has a ``description``
(with its default's source); a field naming a file marks it with ``json_schema_extra=PATH_FILE`` (or
``PATH_INPUT`` / ``PATH_MODEL``) so ``curate validate`` checks it exists before any work.

Columns: an operator declares the columns it needs beyond ``id``/``text`` (:meth:`Operator.needs`) and the
columns it adds, each a :class:`Column` with dtype and null meaning (:meth:`Operator.adds`). The preflight
(:mod:`curate.core.preflight`) checks the chain before work, and ``curate ops NAME`` and the operator's
docstring list them. Name rule: curate never overwrites a user field. An input field named like a column
a step of the pipeline adds, like a rejects column (``step``, ``reason``, ``score``, ``threshold``) or
starting with ``__`` is refused before work, with a hint to rename it (``input.rename``).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict

from curate.core.errors import MissingDependencyError, StepError
from curate.core.stats import StepNumbers

if TYPE_CHECKING:
    from curate.core.global_ops import GlobalOps

#: internal row key (UInt64, unique and stable for a run: shard index << 40 | row in shard).
UID = "__uid"


#: ``Field(json_schema_extra=...)`` markers of parameters that name files (checked by the preflight):
#: a file that must exist; an input spec (file, folder or glob, as ``input.path``); a model reference
#: (a local file/folder, checked when it looks like a path, or a name a library resolves, e.g. a hub id).
PATH_FILE: dict[str, str] = {"path": "file"}
PATH_INPUT: dict[str, str] = {"path": "input"}
PATH_MODEL: dict[str, str] = {"path": "model"}

#: the columns the rejects sink adds to every rejected row (see :mod:`curate.core.step`)
REJECT_COLUMNS = ("step", "reason", "score", "threshold")


@dataclass(frozen=True)
class Column:
    """A column an operator adds: its polars dtype, what it holds, and what a null (or NaN) means.

    ``dtype`` is a polars dtype instance (``pl.UInt32``, ``pl.List(pl.Float64)``) or a dtype class for a
    parametrised family whose width depends on data (``pl.Array``: an embedding of the model's size).
    ``rejects_only``: present on rejected rows only (``dup_of``), dropped from kept rows.
    """

    dtype: Any
    doc: str
    null: str = "never null"
    rejects_only: bool = False

    def matches(self, actual: pl.DataType) -> bool:
        """Whether a frame's dtype is this column's (a dtype class matches any width of that family)."""
        if isinstance(self.dtype, type):
            return isinstance(actual, self.dtype) or actual == self.dtype
        return actual == self.dtype

    def dtype_name(self) -> str:
        return self.dtype.__name__ if isinstance(self.dtype, type) else str(self.dtype)


class OpParams(BaseModel):
    """Base of every operator's ``Params``: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


RuleOp = Literal["<", "<=", ">", ">=", "==", "!=", "is_true", "not_null"]


@dataclass(frozen=True)
class Rule:
    """A row is dropped when ``column <op> threshold`` holds (nulls never drop).

    ``reason`` is what the rejects sink records (e.g. ``"min_doc_words"``); the score recorded is
    the column's value, the threshold is ``threshold``. ``is_true`` drops rows whose boolean column is
    true (threshold unused); ``not_null`` drops rows whose column is set (e.g. ``dup_of``).
    """

    reason: str
    column: str
    op: RuleOp
    threshold: float | int | bool | str | None = None
    #: record this column as the score instead of ``column`` (e.g. a selection decided by a flag)
    score_column: str | None = None

    def drops(self) -> pl.Expr:
        c = pl.col(self.column)
        t = self.threshold
        expr = {
            "<": lambda: c < t,
            "<=": lambda: c <= t,
            ">": lambda: c > t,
            ">=": lambda: c >= t,
            "==": lambda: c == t,
            "!=": lambda: c != t,
            "is_true": lambda: c.cast(pl.Boolean),
            "not_null": lambda: c.is_not_null(),
        }[self.op]()
        if self.op in ("<", "<=", ">", ">="):  # NaN never drops (as Python comparisons with nan are False)
            expr = expr & c.cast(pl.Float64, strict=False).is_not_nan()
        return expr.fill_null(False)

    def score_expr(self) -> pl.Expr:
        """The number recorded as ``score`` in the rejects sink (booleans as 0/1, others null)."""
        if self.score_column is not None:
            return pl.col(self.score_column).cast(pl.Float64, strict=False)
        c = pl.col(self.column)
        if self.op in ("is_true",):
            return c.cast(pl.Float64)
        if self.op == "not_null":
            return pl.lit(None, dtype=pl.Float64)
        return c.cast(pl.Float64, strict=False)


@dataclass
class RunContext:
    """What an operator sees of the run: its folders, the seed, workers and device, and where its own
    numbers go (:meth:`stat`, :meth:`timer`: they land in the step's stats, see :mod:`curate.core.stats`).
    An operator that counts per batch keeps the context it gets in ``setup``."""

    work_dir: Path
    state_dir: Path
    seed: int = 0
    workers: int = 1
    device: str = "cpu"
    step_index: int = 0
    numbers: StepNumbers = field(default_factory=StepNumbers, repr=False, compare=False)

    def stat(self, name: str, value: float = 1) -> None:
        """Add ``value`` to the step's counter ``name`` (shown in ``stats.json`` and the run table)."""
        self.numbers.stat(name, value)

    def timer(self, phase: str) -> AbstractContextManager[None]:
        """``with ctx.timer("buckets"):`` adds the block's seconds to the step's timer ``buckets``."""
        return self.numbers.timer(phase)


@dataclass
class FitContext(RunContext):
    """What a global stage's ``fit`` sees: the spilled shards of the steps before it, in shard order."""

    shards: list[Path] = field(default_factory=list)
    scratch_dir: Path = Path(".")
    _reader: Callable[[Path, Sequence[str] | None], Iterator[pl.DataFrame]] | None = None
    #: how ``map_shards`` runs its per-shard tasks (``iter_tasks``'s signature); None: core's process pool.
    #: The Ray executor sets one that runs them as Ray tasks, so a fit's per-shard work spreads over the
    #: cluster (its global steps go through ``global_ops``).
    _task_runner: Callable[..., Iterator[Any]] | None = field(default=None, repr=False, compare=False)
    #: how the fit's global steps run (:mod:`curate.core.global_ops`); None: in this process. The Ray
    #: executor sets Ray Data shuffles (:mod:`curate.executors.ray_global`), so grouping, connected
    #: components and top-k do not funnel through the driver either.
    _global_ops: GlobalOps | None = field(default=None, repr=False, compare=False)

    @property
    def global_ops(self) -> GlobalOps:
        """The :class:`~curate.core.global_ops.GlobalOps` of this fit: ``star_pairs`` (buckets of equal
        keys), ``group_first`` (first row per key), ``connected_components``, ``map_groups`` (a function
        over whole groups of rows, partition by partition) and ``top_k``."""
        if self._global_ops is None:
            from curate.core.global_ops import GlobalOps

            self._global_ops = GlobalOps()
        return self._global_ops

    def iter_batches(self, columns: Sequence[str] | None = None) -> Iterator[pl.DataFrame]:
        """All rows of the previous segment, batch by batch, in stable shard order, with one schema across
        shards (a metadata field whose type differs between shards follows :mod:`curate.io.schema`)."""
        if self._reader is not None:
            for shard in self.shards:
                yield from self.read_shard(shard, columns)
            return
        from curate.io.spill import read_spills

        yield from read_spills(self.shards, columns)

    def read_shard(self, shard: Path, columns: Sequence[str] | None = None) -> Iterator[pl.DataFrame]:
        from curate.io.spill import read_spill

        yield from (self._reader or read_spill)(shard, columns)

    def progress(self, done: int, total: int | None = None, unit: str = "docs") -> None:
        """Report how far a long fit is (``done`` of ``total`` ``unit``); shown as the run's progress
        (throttled plain lines in logs). Call it from the main process, as often as convenient."""
        from curate.core.progress import report

        report(done, total, unit)

    def map_shards(self, fn: Callable[[Path, Path], None], name: str, suffix: str = ".parquet") -> list[Path]:
        """Run ``fn(shard_dir, out_path)`` over every shard, in parallel over ``workers`` processes.

        ``fn`` must be a top-level (picklable) function that writes ``out_path``. Results already on disk
        from an interrupted run are reused, so a stage's per-shard work resumes where it stopped.
        Returns the output paths in shard order.
        """
        out_dir = self.scratch_dir / name
        out_dir.mkdir(parents=True, exist_ok=True)
        outs = [out_dir / f"{shard.name}{suffix}" for shard in self.shards]
        todo = [(fn, shard, out) for shard, out in zip(self.shards, outs) if not out.exists()]
        from curate.core.pool import iter_tasks
        from curate.core.progress import report

        runner = self._task_runner or iter_tasks
        for k, _ in enumerate(runner(_run_shard_fn, todo, workers=self.workers), 1):
            report(k, len(todo), "shards")
        return outs


def _run_shard_fn(fn: Callable[[Path, Path], None], shard: Path, out: Path) -> None:
    tmp = out.with_name(f".tmp-{os.getpid()}-{out.name}")
    fn(shard, tmp)
    os.replace(tmp, out)


class Operator:
    """Base of all operators. Subclasses set ``Params`` and are registered with ``@register(name)``."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "map"
    Params: ClassVar[type[OpParams]] = OpParams
    #: importable module names this operator needs, and the pip extra that provides them.
    requires: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str] = ""
    #: operators that rewrite ``text`` get a before/after sample in ``work_dir/trace/<step>/``
    rewrites_text: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("__doc__") and cls.declares_adds():
            cls.__doc__ = cls.__doc__.rstrip() + "\n\n" + _columns_section(cls)

    def __init__(self, params: OpParams | None = None, /, **kwargs: Any):
        if params is not None and kwargs:
            raise TypeError("pass either a Params object or keyword arguments, not both")
        self.params = params if params is not None else self.Params(**kwargs)
        self.step_name = self.name or type(self).__name__

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.model_dump().items())
        return f"{type(self).__name__}({args})"

    @classmethod
    def check_dependencies(cls) -> None:
        """Raise :class:`MissingDependencyError` naming the extra if a needed module is absent."""
        for module in cls.requires:
            if importlib.util.find_spec(module) is None:
                raise MissingDependencyError(cls.name or cls.__name__, module, cls.extra or "all")

    def config(self) -> dict[str, Any]:
        """The resolved parameters (defaults filled in), as YAML would write them."""
        return self.params.model_dump(mode="json")

    # -- declarations: what the step reads and writes (checked by curate.core.preflight) --------------
    def needs(self) -> list[str]:
        """Columns this step reads beyond ``id`` and ``text`` (from the input or an earlier step)."""
        return []

    def need_hint(self, column: str) -> str:
        """What to do when a needed column is missing (shown by the preflight); empty for no hint."""
        return ""

    def adds(self) -> dict[str, Column]:
        """Columns this step adds (name -> :class:`Column`), given its parameters.

        Every registered operator overrides this; the base declares nothing so a test can tell an operator
        that adds no column (override returning ``{}``) from one that forgot to declare."""
        return {}

    @classmethod
    def declares_adds(cls) -> bool:
        """True when the class (or a curate base between it and :class:`Operator`) overrides ``adds``."""
        return cls.adds is not Operator.adds

    @classmethod
    def for_docs(cls) -> Operator:
        """An instance with default parameters, for declarations shown by ``curate ops`` and docstrings.

        Required parameters stay unset and ``__init__`` is skipped (it may check model files)."""
        op = cls.__new__(cls)
        op.params = cls.Params.model_construct()
        op.step_name = cls.name or cls.__name__
        return op

    def error(self, message: str, *, column: str | None = None, param: str | None = None) -> StepError:
        """A :class:`StepError` naming this step and the column or parameter at fault (``raise self.error(...)``)."""
        return StepError(self.step_name, message, column=column, param=param)

    def setup(self, ctx: RunContext) -> None:  # noqa: B027 - optional hook
        """Called once per worker before the first batch: load models, state, compile kernels."""

    def process(self, batch: pl.DataFrame) -> pl.DataFrame:
        raise NotImplementedError

    def rules(self) -> list[Rule]:
        """When rows are dropped. Mappers have none."""
        return []

    def finish(self, kept: pl.DataFrame) -> pl.DataFrame:
        """Runs on the kept rows after the rules: drop temporary columns, rewrite text."""
        return kept


def _columns_section(cls: type[Operator]) -> str:
    """The "Columns added" section appended to an operator's docstring, from its declarations (one source,
    so the docstring cannot drift from what ``adds`` says and the registry test checks)."""
    try:
        op = cls.for_docs()
        cols, needs = op.adds(), op.needs()
    except Exception:  # noqa: BLE001 - a declaration that needs a required parameter is shown by `curate ops`
        return "    Columns: see ``curate ops``."
    lines = ["    Columns added (default parameters):", ""]
    lines += [f"    * ``{n}`` ({c.dtype_name()}{', rejected rows only' if c.rejects_only else ''}): {c.doc}; "
              f"{c.null}." for n, c in cols.items()] or ["    * none"]
    if needs:
        lines += ["", "    Columns needed: " + ", ".join(f"``{n}``" for n in needs) + "."]
    return "\n".join(lines)


class Mapper(Operator):
    """Adds or rewrites columns; never drops rows."""

    kind: ClassVar[str] = "map"

    def map(self, batch: pl.DataFrame) -> pl.DataFrame:
        raise NotImplementedError

    def process(self, batch: pl.DataFrame) -> pl.DataFrame:
        return self.map(batch)


class Filter(Operator):
    """Scores each row (``score``) and drops it when one of its ``rules()`` fires."""

    kind: ClassVar[str] = "filter"

    def score(self, batch: pl.DataFrame) -> pl.DataFrame:
        raise NotImplementedError

    def process(self, batch: pl.DataFrame) -> pl.DataFrame:
        return self.score(batch)


class GlobalStage(Operator):
    """Needs all the data: ``fit`` once over the spilled dataset, then ``apply`` per batch."""

    kind: ClassVar[str] = "global"

    def fit(self, ctx: FitContext) -> None:
        raise NotImplementedError

    def apply(self, batch: pl.DataFrame) -> pl.DataFrame:
        raise NotImplementedError

    def process(self, batch: pl.DataFrame) -> pl.DataFrame:
        return self.apply(batch)
