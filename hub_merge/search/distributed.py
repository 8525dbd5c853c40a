"""Fan a generation's candidates out to Ray actors: one per device, each loads the models once.

A generation's candidates are independent, so with ``--workers N`` (a local Ray started here) or
``--ray-address ADDR`` (an existing cluster) they are scored in parallel:

- one :class:`ScoringActor` per worker (its CPU cores, or one GPU) builds the same backend the
  serial search uses (:mod:`hub_merge.search.worker`): the base, the experts, the tokenizer and
  the tasks are loaded once per actor, from a :class:`~hub_merge.search.worker.WorkerSpec` (plain
  data: folders, task rows, settings);
- the driver sends recipes (their JSON, never tensors) and gets per-task scores back;
- the driver alone writes the run folder and the caches: actors only compute;
- a worker that dies mid-generation (killed, out of memory, a lost node) has its candidate
  re-queued to another worker, and a replacement actor is started, so nothing is lost; a real
  error inside scoring (bad recipe) is raised as itself.

Ray is an optional dependency (``pip install 'hub-merge[distributed]'``); nothing here imports it
until a pool is made. Results equal a serial run's: each candidate is scored by the same code on
the same inputs (with the same number of threads per scorer, floating-point sums are identical).
"""

from __future__ import annotations

import logging
import os
import socket
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlparse

from ..errors import ConfigError, DistributedError
from ..merge.recipe import MergeRecipe
from .worker import WorkerSpec

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0  # an unreachable cluster is an error within seconds, not a hang


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise DistributedError(
            "--workers/--ray-address need Ray: pip install 'hub-merge[distributed]'."
        ) from None
    return ray


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse an address nothing answers at, in ``timeout`` seconds (Ray itself retries longer).

    ``host:port`` is a cluster's GCS (``ray start --head`` prints it), ``ray://host:port`` a Ray
    client server (port 10001 by default). ``auto`` (the cluster this machine is part of) is
    left to Ray.
    """
    if address == "auto":
        return
    parsed = urlparse(address if "://" in address else f"gcs://{address}")
    host, port = parsed.hostname, parsed.port
    if parsed.scheme not in ("gcs", "ray") or not host:
        raise ConfigError(f"--ray-address {address!r} is not host:port, ray://host:port or auto.")
    port = port or (10001 if parsed.scheme == "ray" else 6379)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as err:
        raise DistributedError(
            f"No Ray cluster answers at {host}:{port} ({err.__class__.__name__}) within "
            f"{timeout:g} s: start one with `ray start --head` there, or check --ray-address."
        ) from None


class ScoringActor:
    """One scorer (wrapped by ``ray.remote``): the backend built once, then recipes in, scores out."""

    def __init__(self, spec_json: str, cores: Sequence[int] | None, threads: int) -> None:
        import torch

        if cores and hasattr(os, "sched_setaffinity"):
            try:
                os.sched_setaffinity(0, set(cores))  # pinned: workers do not share cores
            except OSError:
                pass
        torch.set_num_threads(max(1, threads))
        self.spec = WorkerSpec.from_json(spec_json)
        self.backend = self.spec.build()

    def pid(self) -> int:
        return os.getpid()

    def evaluate(self, recipe_json: str) -> dict[str, float]:
        return self.backend.evaluate(MergeRecipe.model_validate_json(recipe_json))


class RayPool:
    """Actors on a local Ray (``workers``) or a cluster (``address``), fed one recipe at a time.

    Args:
        spec: what every actor loads (see :class:`~hub_merge.search.worker.WorkerSpec`).
        workers: start a local Ray with this many scorers (CPU cores split between them, or one
            GPU each when this machine has at least that many).
        address: join this cluster instead; one scorer per GPU of the cluster, else per
            ``cpus_per_worker`` CPUs.
        cpus_per_worker: CPUs a scorer reserves on a cluster (default 1; local: cores / workers).
    """

    def __init__(
        self,
        spec: WorkerSpec,
        *,
        workers: int | None = None,
        address: str | None = None,
        cpus_per_worker: int | None = None,
    ) -> None:
        if (workers is None) == (address is None):
            raise ConfigError("Give either --workers N (local Ray) or --ray-address ADDR.")
        if workers is not None and workers < 1:
            raise ConfigError(f"--workers must be at least 1; got {workers}.")
        if address is not None:
            check_reachable(address)
        ray = _import_ray()
        self.ray = ray
        self.spec_json = spec.to_json()
        self._started_ray = False
        if not ray.is_initialized():
            if address is not None:
                try:
                    ray.init(address=address, log_to_driver=False, include_dashboard=False)
                except (ConnectionError, TimeoutError, RuntimeError) as err:
                    raise DistributedError(
                        f"Could not join the Ray cluster at {address}: {err}"
                    ) from None
            else:
                cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
                ray.init(
                    num_cpus=max(len(cores), workers or 1),
                    include_dashboard=False,
                    log_to_driver=False,
                    object_store_memory=80 * 1024**2,  # scores only travel: keep it small
                    runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}},
                )
            self._started_ray = True
        self._plan = self._placements(workers, cpus_per_worker)
        self.actors: list[Any] = [self._start(i) for i in range(len(self._plan))]
        self.restarts = 0
        self.reruns = 0  # candidates re-run after their worker died

    # -- actors ------------------------------------------------------------------------------

    def _placements(self, workers: int | None, cpus_per_worker: int | None) -> list[dict]:
        """(num_cpus, num_gpus, cores) for each actor."""
        total = self.ray.cluster_resources()
        gpus = int(total.get("GPU", 0))
        cpus = int(total.get("CPU", 1))
        if workers is None:  # a cluster: one per GPU, else per cpus_per_worker CPUs
            if gpus:
                return [{"num_cpus": 1, "num_gpus": 1, "cores": None} for _ in range(gpus)]
            per = cpus_per_worker or 1
            return [{"num_cpus": per, "num_gpus": 0, "cores": None} for _ in range(cpus // per)]
        if gpus >= workers:
            return [{"num_cpus": 1, "num_gpus": 1, "cores": None} for _ in range(workers)]
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        per = max(1, len(cores) // workers) if cores else 1
        out = []
        for i in range(workers):
            mine = cores[i * per : (i + 1) * per] if len(cores) >= workers else None
            out.append(
                {"num_cpus": per if len(cores) >= workers else 0, "num_gpus": 0, "cores": mine}
            )
        return out

    def _start(self, index: int) -> Any:
        p = self._plan[index]
        actor_cls = self.ray.remote(ScoringActor).options(
            num_cpus=p["num_cpus"], num_gpus=p["num_gpus"], max_restarts=0, max_task_retries=0
        )
        threads = max(1, len(p["cores"]) if p["cores"] else p["num_cpus"] or 1)
        return actor_cls.remote(self.spec_json, p["cores"], threads)

    def pids(self) -> list[int]:
        """Process ids of the live actors (tests kill one to check nothing is lost)."""
        return list(self.ray.get([a.pid.remote() for a in self.actors]))

    # -- fan-out -----------------------------------------------------------------------------

    def evaluate_many(
        self,
        recipes: Sequence[MergeRecipe],
        on_done: Callable[[int], None] | None = None,
    ) -> list[dict[str, float]]:
        """Scores of every recipe, in order; a dead worker's candidate is re-run elsewhere.

        ``on_done(i)`` is called as recipe ``i``'s scores arrive (progress displays).
        """
        from ray.exceptions import (
            ActorUnavailableError,
            RayActorError,
            RayTaskError,
            WorkerCrashedError,
        )

        lost = (RayActorError, ActorUnavailableError, WorkerCrashedError)
        jobs = [r.model_dump_json(exclude_none=True) for r in recipes]
        results: list[dict[str, float] | None] = [None] * len(jobs)
        pending = deque(range(len(jobs)))
        idle = deque(range(len(self.actors)))
        inflight: dict[Any, tuple[int, int]] = {}
        while pending or inflight:
            while pending and idle:
                slot, job = idle.popleft(), pending.popleft()
                inflight[self.actors[slot].evaluate.remote(jobs[job])] = (slot, job)
            done, _ = self.ray.wait(list(inflight), num_returns=1)
            for ref in done:
                slot, job = inflight.pop(ref)
                try:
                    results[job] = dict(self.ray.get(ref))
                    idle.append(slot)
                    if on_done is not None:
                        on_done(job)
                except lost as err:
                    self._replace(slot, err)
                    pending.appendleft(job)
                    self.reruns += 1
                    idle.append(slot)
                except RayTaskError as err:
                    cause = err.as_instanceof_cause()
                    raise (cause if isinstance(cause, Exception) else err) from None
        return results  # type: ignore[return-value]

    def _replace(self, slot: int, err: Exception) -> None:
        """Start a new actor in a dead one's place (it loads the models again)."""
        self.restarts += 1
        if self.restarts > 3 * len(self.actors):
            raise DistributedError(
                f"Scoring workers keep dying ({self.restarts} restarts; last: "
                f"{err.__class__.__name__}). Check the workers' memory (ray logs)."
            ) from None
        logger.warning("scoring worker %d died (%s); restarting it", slot, err.__class__.__name__)
        self.actors[slot] = self._start(slot)

    def close(self) -> None:
        for a in self.actors:
            try:
                self.ray.kill(a)
            except Exception:  # noqa: BLE001 (already dead)
                pass
        self.actors = []
        if self._started_ray:
            self.ray.shutdown()
            self._started_ray = False

    def __enter__(self) -> RayPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DistributedBackend:
    """A backend whose evaluations go to a :class:`RayPool`; everything else stays local.

    Kinship, held-out test scores and writing the winner run on the driver's own backend (they
    are few); ``evaluate_many`` is what the core calls with a generation's cache misses.
    """

    def __init__(self, local: Any, pool: RayPool) -> None:
        self.local = local
        self.pool = pool

    def evaluate(self, recipe: MergeRecipe) -> dict[str, float]:
        return self.pool.evaluate_many([recipe])[0]

    def evaluate_many(self, recipes: Sequence[MergeRecipe]) -> list[dict[str, float]]:
        return self.pool.evaluate_many(recipes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.local, name)
