"""``RunSpec``: the plain, frozen description of one run that an executor is handed.

An executor needs the input, the operator chain, the output, where rejects go, the work dir, the seed and
its own settings - nothing else. :class:`curate.core.pipeline.Pipeline` builds one in ``run()``; tests and
other front ends can build one directly, so executors depend on ``core`` only, never on the facade
(DataTrove's executors likewise take a list of steps; see ``shared/reference/style.md``, habit 3).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from curate.core.config import ExecutorSpec
from curate.core.operator import Operator
from curate.io.readers import InputSpec
from curate.io.writers import OutputSpec, RejectsSpec


def name_steps(steps: Sequence[Operator]) -> None:
    """Give every operator its step name: its YAML name, then ``name#2``, ``name#3`` for repeats (the
    names of rejects folders, stats rows and state dirs)."""
    seen: Counter[str] = Counter()
    for op in steps:
        seen[op.name] += 1
        op.step_name = op.name if seen[op.name] == 1 else f"{op.name}#{seen[op.name]}"


@dataclass(frozen=True)
class RunSpec:
    """What one run reads, does and writes. ``rejects`` defaults to ``work_dir/rejects``; ``workers`` to
    the executor's setting, else the number of cores. Building one checks each operator's dependencies
    and names the steps (as :class:`Pipeline` does)."""

    input: InputSpec
    steps: tuple[Operator, ...]
    output: OutputSpec
    work_dir: Path
    rejects: RejectsSpec | None = None
    seed: int = 0
    executor: ExecutorSpec = field(default_factory=ExecutorSpec)
    workers: int | None = None

    def __post_init__(self) -> None:
        # frozen: normalise through object.__setattr__ (the dataclass stays immutable for its users)
        object.__setattr__(self, "steps", tuple(self.steps))
        object.__setattr__(self, "work_dir", Path(self.work_dir))
        if self.rejects is None:
            object.__setattr__(self, "rejects", RejectsSpec(path=os.path.join(str(self.work_dir), "rejects")))
        if self.workers is None:
            object.__setattr__(self, "workers", self.executor.workers or os.cpu_count() or 1)
        for op in self.steps:
            op.check_dependencies()
        name_steps(self.steps)

    @property
    def rejects_spec(self) -> RejectsSpec:
        """Where rejected rows go (always set after construction)."""
        assert self.rejects is not None
        return self.rejects

    def to_config(self) -> dict[str, Any]:
        """The resolved configuration, every default filled in (written to ``work_dir/pipeline.yaml``)."""
        return {
            "input": self.input.model_dump(mode="json"),
            "steps": [{op.name: op.config()} for op in self.steps],
            "output": self.output.model_dump(mode="json"),
            "rejects": self.rejects_spec.model_dump(mode="json"),
            "work_dir": str(self.work_dir),
            "executor": self.executor.model_dump(mode="json"),
            "seed": self.seed,
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_config(), sort_keys=False)
