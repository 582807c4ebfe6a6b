"""A real multi-node Ray cluster on loopback (tests/conftest.py's `two_node_cluster`, benchmarks/ddp_overhead.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


class TwoNodeCluster:
    """A real two-node Ray cluster on loopback: `ray start --head` and a second `ray start --address`
    (a worker node), 1 CPU each, each with its own short temp dir under /tmp (Ray's socket paths have
    a length limit). Only the processes started here are ever stopped (by process group)."""

    def __init__(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.ray_bin = str(Path(sys.executable).parent / "ray")
        self.head_dir = Path(f"/tmp/rh{self.port}")
        self.worker_dir = Path(f"/tmp/rw{self.port}")
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true",
                    "RAY_AUTH_MODE": "token"}  # Ray 2.60 starts clusters with token auth
        self.env.pop("RAY_ADDRESS", None)
        self.worker = None
        self.head = self._start("--head", f"--port={self.port}", f"--temp-dir={self.head_dir}",
                                "--include-dashboard=false")
        try:
            self._wait_for_nodes(1)
            self.start_worker()
        except BaseException:
            self.stop()
            raise

    def _start(self, *args: str):
        return subprocess.Popen(
            [self.ray_bin, "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1",
             "--object-store-memory=100000000", *args],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def nodes(self) -> list[dict]:
        """Ray's own view (`ray.nodes()`) from a separate driver (the test process may hold a local Ray)."""
        code = ("import json, ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False); "
                "print('NODES' + json.dumps(ray.nodes()))" % self.address)
        out = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=120)
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("NODES")]
        assert line, out.stderr[-2000:]
        return json.loads(line[0][5:])

    def alive(self) -> int:
        return sum(1 for n in self.nodes() if n["Alive"])

    def _wait_for_nodes(self, n: int, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            proc = subprocess.run([self.ray_bin, "status", f"--address={self.address}"],
                                  env=self.env, capture_output=True, text=True)
            active = proc.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
            if proc.returncode == 0 and active.count("node_") >= n:
                return
            for p in (self.head, self.worker):
                assert p is None or p.poll() is None, "a ray node exited while starting"
            time.sleep(1)
        raise AssertionError(f"the Ray cluster did not reach {n} node(s)")

    def start_worker(self) -> None:
        """(Re)start the worker node and wait until Ray sees both nodes alive."""
        self.worker = self._start(f"--address={self.address}", f"--temp-dir={self.worker_dir}")
        self._wait_for_nodes(2)

    def kill_worker(self) -> None:
        """Lose the worker node: SIGKILL its raylet and every process in its group (its workers)."""
        os.killpg(self.worker.pid, signal.SIGKILL)
        self.worker.wait()

    def logs_mentioning(self, node_dir: Path, marker: str) -> list[Path]:
        """Worker log files of a node that name `marker` (Ray writes ':actor_name:<Class>' and
        ':task_name:<fn>' into a worker's log for what it runs): evidence of what ran on that node."""
        found = []
        for f in sorted({p.resolve() for p in node_dir.glob("session_*/logs/worker-*.out")}):
            try:
                if marker in f.read_text(errors="replace"):
                    found.append(f)
            except OSError:
                pass
        return found

    def stop(self) -> None:
        import signal
        for p in (self.worker, self.head):
            if p is None or p.poll() is not None:
                continue
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for d in (self.head_dir, self.worker_dir):
            shutil.rmtree(d, ignore_errors=True)
