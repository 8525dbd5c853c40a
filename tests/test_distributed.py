"""Ray fan-out: results equal a serial run's, a killed worker loses nothing, a bad address fails fast."""

from __future__ import annotations

import os
import signal
import threading

import pytest
import ray  # hub-merge[distributed]: CI installs it (scripts/test.sh); missing is a failure

from hub_merge.errors import DistributedError
from hub_merge.evaluate import load_tasks
from hub_merge.merge.recipe import MergeRecipe, ModelEntry
from hub_merge.search import SearchConfig, search
from hub_merge.search.distributed import RayPool, check_reachable
from hub_merge.search.worker import WorkerSpec

NAMES = ["add", "reverse", "uppercase"]


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (pools and searches join it instead of starting their own)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def spec(tiny_zoo):
    tasks = load_tasks([tiny_zoo.tasks[n] for n in NAMES], limit=4)
    return WorkerSpec.for_tasks(
        tasks,
        base=str(tiny_zoo.base),
        base_source="@base",
        folders={n: str(tiny_zoo.adapters[n]) for n in NAMES},
        device="cpu",
    )


def recipes() -> list[MergeRecipe]:
    out = [
        MergeRecipe(
            method="task_arithmetic",
            base="@base",
            models=[
                ModelEntry(model=n, parameters={"weight": w})
                for n, w in zip(NAMES, [0.1 * i, 0.5, 0.3], strict=True)
            ],
        )
        for i in range(6)
    ]
    out.append(  # not affine: the merge path inside the worker
        MergeRecipe(method="slerp", base=NAMES[0], models=[NAMES[1]], parameters={"t": 0.3})
    )
    return out


def test_an_unreachable_cluster_is_a_typed_error_in_seconds(tiny_zoo, tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on (bound, then released)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Ray itself would retry this address for about a minute before giving up
    with pytest.raises(DistributedError, match="ray start --head"):
        check_reachable(f"127.0.0.1:{port}", timeout=2.0)
    out = tmp_path / "run"
    with pytest.raises(DistributedError, match="No Ray cluster answers"):
        search(
            SearchConfig(
                base=str(tiny_zoo.base),
                experts=[str(tiny_zoo.adapters[n]) for n in NAMES],
                tasks=[str(tiny_zoo.tasks[n]) for n in NAMES],
                out=str(out),
                ray_address="127.0.0.1:1",
                progress=False,
            )
        )
    assert not out.exists()  # refused before anything was written
    with pytest.raises(Exception, match="host:port"):
        check_reachable("http://nowhere")


@pytest.mark.slow
def test_a_killed_worker_loses_nothing(local_ray, spec):
    want = [spec.build().evaluate(r) for r in recipes()]
    with RayPool(spec, workers=2) as pool:
        victim = pool.pids()[1]
        killed = threading.Event()

        def kill_the_other(_job: int) -> None:
            if not killed.is_set():  # the first result is in: the other worker is mid-job
                killed.set()
                os.kill(victim, signal.SIGKILL)

        got = pool.evaluate_many(recipes(), on_done=kill_the_other)
        assert killed.is_set()
        assert pool.restarts == 1 and pool.reruns >= 1
        assert victim not in pool.pids()  # a fresh worker took its place
        assert got == want  # every candidate scored, each exactly as serially


@pytest.mark.slow
def test_two_workers_give_the_serial_search(local_ray, tiny_zoo, tmp_path):
    def run(out, **kw):
        return search(
            SearchConfig(
                base=str(tiny_zoo.base),
                experts=[str(tiny_zoo.adapters[n]) for n in NAMES],
                tasks=[str(tiny_zoo.tasks[n]) for n in NAMES],
                out=str(out),
                strategy="swarm",
                settings={"population": 4, "max_steps": 2},
                limit=6,
                device="cpu",
                progress=False,
                materialize=[],
                **kw,
            )
        )

    serial = run(tmp_path / "serial")
    fanned = run(tmp_path / "ray", workers=2)
    assert fanned.evaluations == serial.evaluations > 4
    a, b = serial.tree.nodes, fanned.tree.nodes
    assert list(a) == list(b)
    for node_id in a:
        assert a[node_id].scores == b[node_id].scores, node_id  # identical, not merely close
    assert fanned.winner == serial.winner
    assert (tmp_path / "ray" / "scores.json").read_text() == (
        tmp_path / "serial" / "scores.json"
    ).read_text()


@pytest.mark.slow
def test_a_compare_on_two_workers_gives_the_serial_leaderboard(
    local_ray, tiny_zoo, tmp_path, monkeypatch
):
    from hub_merge.leaderboard import CompareConfig, compare_strategies

    def run(out, **kw):
        return compare_strategies(
            CompareConfig(
                base=str(tiny_zoo.base),
                experts=[str(tiny_zoo.adapters[n]) for n in NAMES],
                tasks=[str(tiny_zoo.tasks[n]) for n in NAMES],
                out=str(out),
                strategies=["greedy", "swarm"],
                settings={"greedy": {"generations": 2}, "swarm": {"population": 4, "max_steps": 2}},
                limit=6,
                exact_match=False,
                device="cpu",
                progress=False,
                **kw,
            )
        )

    serial = run(tmp_path / "serial")
    scored_remotely = []
    evaluate_many = RayPool.evaluate_many  # observed, not replaced: the workers still score

    def observed(self, recipes, *args, **kwargs):
        out = evaluate_many(self, recipes, *args, **kwargs)
        scored_remotely.extend(recipes)
        return out

    monkeypatch.setattr(RayPool, "evaluate_many", observed)
    fanned = run(tmp_path / "ray", workers=2)
    assert len(scored_remotely) > 4  # the compare's candidates went to the Ray workers
    assert [r.name for r in fanned.rows] == [r.name for r in serial.rows]
    for a, b in zip(serial.rows, fanned.rows, strict=True):
        assert [s.test for s in a.seeds] == [s.test for s in b.seeds], a.name  # identical
        assert [s.evaluations for s in a.seeds] == [s.evaluations for s in b.seeds], a.name
    assert fanned.recommended().name == serial.recommended().name
