"""One way for every stage to reach Ray: local cluster, `auto`, or host:port.

Precedence: RAY_ADDRESS (when set) > params `ray.address` > a local cluster sized by params.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import ray

from components.config import RayParams
from components.errors import UserError
from pipelines.common import console

log = logging.getLogger(__name__)

_PACKAGES = [Path(__file__).resolve().parents[2] / name for name in ("components", "pipelines")]


# OpenMP settings for every Ray worker process: a thread that finishes its share of a parallel region
# sleeps instead of spinning, so on a busy machine it does not take CPU from the thread (or the other
# process) the region is waiting for (benchmarks/pretrain_contention.py).
WORKER_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
# Ray starts its workers at niceness 15 (its worker_niceness setting) to keep its own daemons
# responsive; on a shared machine that hands a core to any other busy process almost entirely
# (weight 36 against 1024), and a training step waits for the thread stuck there. A local cluster's
# workers run at the driver's priority instead. (An existing cluster keeps its own setting.)
LOCAL_CLUSTER_ENV = {"RAY_worker_niceness": "0"}


def resolve_address(cfg: RayParams) -> str | None:
    env = os.environ.get("RAY_ADDRESS", "").strip()
    return env or cfg.address


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a dead host:port: ray.init would otherwise retry for minutes."""
    if address.startswith("auto"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"ray.address / RAY_ADDRESS = {address!r} is not allowed: use null, \"auto\" or host:port")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise UserError(f"cannot connect to the Ray cluster at {address!r} ({exc.strerror or exc}); start one with "
                        "`ray start --head`, fix ray.address / RAY_ADDRESS, or set ray.address: null "
                        "for a local cluster") from None


@contextlib.contextmanager
def ray_cluster(cfg: RayParams) -> Iterator[dict[str, float]]:
    """Connect (or start a local cluster) for the duration of a stage; yields cluster resources."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # worker lines land in a log file: no colour codes
    if ray.is_initialized():  # already connected (e.g. a test or a notebook): reuse, don't tear down
        with _worker_output_to_console():
            yield ray.cluster_resources()
        return
    address = resolve_address(cfg)
    # Worker output is forwarded to this driver, whose stdout/stderr are the stage's log file while a
    # stage runs (console.stage_console); marked lines reach the console (console.on_worker_output).
    common: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.INFO, log_to_driver=True)
    if address is None:
        for key, value in {**WORKER_ENV, **LOCAL_CLUSTER_ENV}.items():  # the raylet and workers inherit them
            os.environ.setdefault(key, value)
        ray.init(num_cpus=cfg.num_cpus or os.cpu_count(), num_gpus=cfg.num_gpus,
                 object_store_memory=cfg.object_store_memory_mb * 1024 * 1024, **common)
    else:
        _probe(address)
        # Workers of an existing cluster may not have this project installed: ship its packages.
        runtime_env = {"py_modules": [str(p) for p in _PACKAGES], "env_vars": dict(WORKER_ENV)}
        try:
            ray.init(address=address, runtime_env=runtime_env, **common)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserError(
                f"cannot connect to the Ray cluster at {address!r} ({str(exc).splitlines()[0]}); start one with "
                "`ray start --head`, fix ray.address / RAY_ADDRESS (and RAY_AUTH_TOKEN if the cluster uses token "
                "auth), or set ray.address: null for a local cluster"
            ) from None
    try:
        with _worker_output_to_console():
            yield ray.cluster_resources()
    finally:
        ray.shutdown()


# What the raylet tells the driver when it retries a task whose worker died (Ray 2.60's wording).
TASK_RETRY = re.compile(r"Task \S+ failed\. There are \d+ retries remaining, so the task will be retried")
TASK_RETRIED_NOTE = "warning: a Ray worker was lost mid-task; Ray retried its task (the result is the same)"


@contextlib.contextmanager
def _worker_output_to_console() -> Iterator[None]:
    """Let marked worker lines (progress, notes) reach the console; Ray's own printer sends every
    line to the driver's stdout/stderr (the stage's log file).

    A task retried after its worker died is otherwise silent: the raylet's notice goes to the log only,
    through Ray's error printer (not the worker-output hook), which is watched here for the console's note.
    The notice arrives at once, unlike a note from the retried task, which may still be in flight when
    the stage ends."""
    try:
        from ray._private import worker as ray_worker
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:  # a Ray without the hooks: notes and progress stay in the log
        yield
        return
    printer = ray_worker.print_to_stdstream

    def print_and_watch(data: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        if data.get("pid") == "raylet" and any(TASK_RETRY.search(line) for line in data.get("lines", ())):
            console.note_once(TASK_RETRIED_NOTE)
        return printer(data, *args, **kwargs)

    dispatcher.add_handler("coordtok_console", console.on_worker_output)
    ray_worker.print_to_stdstream = print_and_watch
    try:
        yield
    finally:
        ray_worker.print_to_stdstream = printer
        dispatcher.remove_handler("coordtok_console")


def run_tasks(remote_fn: Any, args: Sequence[tuple], max_in_flight: int, desc: str, unit: str = "it",
              on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
    """Run `remote_fn.remote(*a)` for every `a` with at most `max_in_flight` pending; results in input order.

    Shows a progress bar with rate and ETA. A task killed with its worker is retried by Ray (tasks'
    default max_retries). The first task error is raised after the tasks still running are cancelled
    (so none keeps writing into a folder the caller is about to remove); a UserError raised inside a
    task comes out as itself (its one sentence), not wrapped in Ray's remote traceback.
    """
    results: list[Any] = [None] * len(args)
    pending: dict[Any, int] = {}
    next_i = 0
    # Spread over the nodes: Ray's default policy keeps tasks on the driver's node while it has room,
    # and short per-file tasks finish there before another node has started a worker, so on a
    # cluster of small nodes a whole stage ran on the head (seen on the two-node loopback cluster).
    remote_fn = remote_fn.options(scheduling_strategy="SPREAD")
    try:
        with console.progress_bar(total=len(args), desc=desc, unit=unit) as bar:
            while next_i < len(args) or pending:
                while next_i < len(args) and len(pending) < max_in_flight:
                    pending[remote_fn.remote(*args[next_i])] = next_i
                    next_i += 1
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    i = pending.pop(ref)
                    results[i] = ray.get(ref)
                    if on_result is not None:
                        on_result(i, results[i])
                    bar.update(1)
    except BaseException as exc:
        for ref in pending:
            ray.cancel(ref, force=True)
        if pending:
            ray.wait(list(pending), num_returns=len(pending), timeout=30)
        cause = getattr(exc, "cause", None)
        if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(cause, UserError):
            raise cause from None
        raise
    return results


def size_threads(cpus: float | None = None) -> int:
    """Size torch's and OpenMP's thread pools to the CPUs Ray granted this worker, actor or task
    (`cpus`, else Ray's assigned resources; at least 1). Returns the thread count.

    torch otherwise keeps the pool it sized at import, from OMP_NUM_THREADS of the process that first
    imported it, whatever this task was granted; more threads than CPUs granted make every parallel
    region wait for a thread that shares its core."""
    import torch

    if cpus is None:
        try:
            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        except Exception:  # not inside Ray
            cpus = None
    n = max(1, int(cpus or 1))
    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(n)  # libraries loaded later
    return n


def default_parallelism(resources: dict[str, float], cpus_per_task: float, max_in_flight: int | None) -> int:
    """Tasks to keep in flight: what the cluster's CPUs allow, unless params cap it."""
    if max_in_flight is not None:
        return max_in_flight
    return max(1, int(resources.get("CPU", 1) // cpus_per_task))


def alive_nodes() -> list[dict[str, float]]:
    """Each alive node's total resources (Ray's view), e.g. {"CPU": 1.0, "GPU": 0.0, ...}."""
    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def node_capacity(request: dict[str, float]) -> int:
    """How many units asking for `request` ({"CPU": 0.5, ...}) the alive nodes hold at once (each
    unit on one node: the cluster's total is not enough when it is split over nodes)."""
    wanted = {k: float(v) for k, v in request.items() if v and v > 0}
    if not wanted:
        return 0
    return sum(int(min(n.get(k, 0.0) / v + 1e-9 for k, v in wanted.items())) for n in alive_nodes())


def check_fits(request: dict[str, float], params: dict[str, str], unit: str = "worker", count: int = 1) -> None:
    """Fail in one sentence when no node can hold one `unit` asking for `request` ({"CPU": 2.0, ...}),
    or the cluster cannot hold `count` of them at once: Ray would otherwise wait forever (and its
    autoscaler print 'No available node types can fulfill resource request' every few seconds).

    `params` names the param behind each resource, e.g. {"CPU": "pretrain.cpus_per_worker"}.
    """
    wanted = {k: float(v) for k, v in request.items() if v and v > 0}
    nodes = alive_nodes()
    if not wanted or not nodes:
        return
    ask = " and ".join(f"{v:g} {k}" for k, v in wanted.items())

    def holds(node: dict[str, float]) -> int:
        return int(min(node.get(k, 0.0) / v + 1e-9 for k, v in wanted.items()))

    if not any(holds(n) for n in nodes):
        largest = max(nodes, key=lambda n: tuple(n.get(k, 0.0) for k in wanted))
        short = [k for k, v in wanted.items() if largest.get(k, 0.0) < v] or list(wanted)
        have = " and ".join(f"{largest.get(k, 0.0):g} {k}" for k in wanted)
        names = " / ".join(params.get(k, k) for k in short)
        raise UserError(f"{names} asks for {ask} per {unit}, but the largest node of the Ray cluster has {have}; "
                        f"lower {names} or add a node that large")
    fits = sum(holds(n) for n in nodes)
    if fits < count:
        names = " / ".join(params.get(k, k) for k in wanted)
        raise UserError(f"{count} {unit}s of {ask} each do not fit in the Ray cluster (its {len(nodes)} node(s) "
                        f"hold {fits}); lower the {unit} count or {names}, or add nodes")
