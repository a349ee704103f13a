"""Ray executor: the local executor's shard tasks run in a pool of Ray actors, and a global stage's
per-shard fit work (``FitContext.map_shards``: MinHash signatures and candidate verification, SemDeDup
embeddings, DSIR and Moore-Lewis scoring) runs as Ray tasks across the cluster.

Each shard of a segment runs :func:`curate.core.runner.run_shard` in one of ``workers`` long-lived actors,
so outputs, rejects, stats and resume markers are byte for byte those of the local executor, and an
operator with heavy state (fastText, KenLM, embedding and LM models: a ``setup()`` that loads a model) loads
it once per actor, not once per shard. When an operator needs torch and the cluster has GPUs, each actor
asks for ``num_gpus`` (a share of one GPU) so models run there. The work dir and the output paths must be
on storage every node sees (a shared filesystem). What still runs on the driver: the global part of each
fit (grouping hashes, MinHash buckets and connected components, selector top-k), as locally.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from curate.core.errors import MissingDependencyError
from curate.core.run import RunSpec
from curate.core.runner import ShardTask, run_shard
from curate.executors.base import Executor


class _ShardActor:
    """One Ray worker process kept for the whole run: its setup cache holds the loaded operators."""

    def ready(self) -> int:
        return os.getpid()

    def run(self, task: ShardTask) -> int:
        stats = run_shard(task)
        return stats[0].docs_in if stats else 0


def _remote_call(fn: Callable[..., Any], args: tuple) -> Any:
    return fn(*args)


class RayExecutor(Executor):
    def __init__(self, spec: RunSpec):
        super().__init__(spec)
        self.address = spec.executor.address

    def _ray(self) -> Any:
        try:
            import ray
        except ImportError:
            raise MissingDependencyError("executor: ray", "ray", "ray") from None
        if not ray.is_initialized():
            local = self.address is None
            ray.init(address=self.address, num_cpus=self.workers if local else None, include_dashboard=False,
                     log_to_driver=False, ignore_reinit_error=True)
        return ray

    def actor_gpus(self, ray: Any) -> float:
        """GPUs per shard actor: a share of the cluster's GPUs when an operator needs torch, else 0."""
        if not any("torch" in op.requires for op in self.spec.steps):
            return 0.0
        gpus = float(ray.cluster_resources().get("GPU", 0.0))
        return min(1.0, gpus / self.workers) if gpus else 0.0

    def _run_tasks(self, tasks: list[ShardTask], progress: Callable[[int], None]) -> None:
        if not tasks:
            return
        ray = self._ray()
        from ray.util import ActorPool

        actor = ray.remote(num_cpus=1, num_gpus=self.actor_gpus(ray))(_ShardActor)
        actors = [actor.remote() for _ in range(min(self.workers, len(tasks)))]
        try:
            for n in ActorPool(actors).map_unordered(lambda a, t: a.run.remote(t), tasks):
                progress(n)
        finally:
            for a in actors:  # the actors' loaded models go with them; the next segment starts fresh
                ray.kill(a)

    def _fit_task_runner(self) -> Callable[..., Iterator[Any]]:
        def run(fn: Callable[..., Any], tasks: list[tuple], *, workers: int) -> Iterator[Any]:
            if not tasks:
                return
            ray = self._ray()
            remote = ray.remote(num_cpus=1)(_remote_call)
            pending = [remote.remote(fn, t) for t in tasks]
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                yield ray.get(done[0])

        return run
