"""The operator as a real subprocess, so tests and benches can kill and restart it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from spatialforge.devcluster.ports import free_port


class OperatorProcess:
    def __init__(self, kubeconfig: Path, log_dir: Path, name: str = "operator", **settings: str) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_dir / f"{name}.log"
        self.name = name
        self.health_port = free_port()
        self.metrics_port = free_port()
        self.settings = {
            "SPATIALFORGE_NAMESPACE": "spatialforge-system",
            "SPATIALFORGE_UNSCHEDULABLE_TIMEOUT_SECONDS": "3",
            "SPATIALFORGE_IMAGE_PULL_GRACE_SECONDS": "0",
            "SPATIALFORGE_LEASE_DURATION_SECONDS": "6",
            "SPATIALFORGE_ADMISSION_INTERVAL_SECONDS": "1",
            **settings,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the operator; refuses while this one still runs (two leaders with one identity
        would act at once)."""
        if self.alive():
            raise RuntimeError(f"{self.name} is already running (pid {self.proc.pid}); stop or kill it first")
        self._kill_orphan()
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), **self.settings,
               "SPATIALFORGE_HEALTH_PORT": str(self.health_port),
               "SPATIALFORGE_METRICS_PORT": str(self.metrics_port),
               "SPATIALFORGE_IDENTITY": f"{self.name}-{os.getpid()}"}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "spatialforge.operator"], env=env,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        self.pidfile.write_text(str(self.proc.pid))

    @property
    def pidfile(self) -> Path:
        """Where this operator's pid is kept, beside its log, in the session's own state."""
        return self.log_path.parent.parent / "pids" / f"{self.name}.pid"

    def _kill_orphan(self) -> None:
        """Kill an operator of the same name left by an earlier session that was itself killed
        (its own session, so nothing ended it): it would hold the Lease, and this one stand by."""
        try:
            pid = int(self.pidfile.read_text())
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        if f"KUBECONFIG={self.kubeconfig}".encode() in environ and b"SPATIALFORGE_IDENTITY=" + self.name.encode() in \
                b"\n".join(environ):
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, no lease release (the worst case)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""
