"""``Pipeline``: compose an input, operators and an output, in Python or from YAML, and run it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from curate.core.config import ExecutorSpec, load_yaml, parse_config
from curate.core.errors import ConfigError
from curate.core.operator import Operator
from curate.core.run import RunSpec, name_steps
from curate.io.readers import InputSpec
from curate.io.writers import OutputSpec, RejectsSpec


class Pipeline:
    """An input, a list of operators and an output.

    >>> Pipeline(read("data/*.jsonl.gz"), GopherQuality(), C4Quality(), ExactDedup(),
    ...          write("out/", format="parquet")).run(work_dir=".curate/run", workers=2)
    """

    def __init__(self, *parts: InputSpec | Operator | OutputSpec | RejectsSpec, work_dir: str | None = None,
                 executor: ExecutorSpec | None = None, seed: int = 0):
        self.input: InputSpec | None = None
        self.output: OutputSpec | None = None
        self.rejects: RejectsSpec | None = None
        self.steps: list[Operator] = []
        for p in parts:
            if isinstance(p, InputSpec):
                self.input = p
            elif isinstance(p, OutputSpec):
                self.output = p
            elif isinstance(p, RejectsSpec):
                self.rejects = p
            elif isinstance(p, Operator):
                self.steps.append(p)
            else:
                raise TypeError(f"Pipeline parts are read(...), operators and write(...); got {p!r}")
        if self.input is None or self.output is None:
            raise ConfigError("a pipeline needs an input (read(...)) and an output (write(...))")
        for op in self.steps:
            op.check_dependencies()
        name_steps(self.steps)
        self.work_dir = work_dir or ".curate/run"
        self.executor = executor or ExecutorSpec()
        self.seed = seed

    @classmethod
    def from_yaml(cls, path: str | Path, *, allow_code: bool = False) -> Pipeline:
        """Load and validate ``pipeline.yaml``; every problem is reported at once with its line.

        ``allow_code``: let parameters such as ``shapley.utility: pkg.mod:fn`` import Python code
        (refused otherwise, so a pipeline file alone cannot run code).
        """
        data, lines = load_yaml(path)
        cfg, ops = parse_config(data, lines, source=str(path), allow_code=allow_code)
        return cls(cfg.input, *ops, cfg.output, *([cfg.rejects] if cfg.rejects else []),
                   work_dir=cfg.work_dir, executor=cfg.executor, seed=cfg.seed)

    def spec(self, *, work_dir: str | None = None, workers: int | None = None,
             executor: str | None = None) -> RunSpec:
        """The frozen run description an executor is handed (``executor`` overrides the configured type)."""
        assert self.input is not None and self.output is not None
        ex = self.executor if executor is None else self.executor.model_copy(update={"type": executor})
        wd = work_dir if work_dir is not None else self.work_dir
        return RunSpec(input=self.input, steps=tuple(self.steps), output=self.output, work_dir=Path(wd),
                       rejects=self.rejects or RejectsSpec(path=os.path.join(wd, "rejects")), seed=self.seed,
                       executor=ex, workers=workers)

    def to_config(self) -> dict[str, Any]:
        """The resolved configuration, every default filled in (written to ``work_dir/pipeline.yaml``)."""
        return self.spec().to_config()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_config(), sort_keys=False)

    def check(self) -> None:
        """The preflight (:mod:`curate.core.preflight`): raise one ConfigError listing everything a run would
        reject (input fields, the column chain, files named by parameters, name clashes, extras) before work."""
        from curate.core.preflight import check_pipeline

        check_pipeline(self)

    def rejects_spec(self) -> RejectsSpec:
        return self.rejects or RejectsSpec(path=os.path.join(self.work_dir, "rejects"))

    def run(self, work_dir: str | None = None, workers: int | None = None, progress: bool = True,
            executor: str | None = None):
        """Run to completion (resuming finished shards and stages); returns the :class:`RunResult`."""
        if work_dir is not None:
            self.work_dir = work_dir
        from curate.executors import run_spec

        self.check()
        return run_spec(self.spec(workers=workers, executor=executor), progress=progress)
