"""A real `mlflow server` on 127.0.0.1 in a subprocess, for tests of fst.tracking against a server.

Its backend store is a SQLite DB and its artifacts a folder, both under `root`; the server proxies
artifact uploads (MLflow 3 serves artifacts by default). `stop()` then `start()` brings it back on
the same port with the same stores, as a tracking server that went down and came back. Tests import
it as `from mlflow_server import MlflowServer` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

STARTUP_TIMEOUT_S = 180.0  # a cold start takes 10-20 s on a busy small machine


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.artifacts = root / "artifacts"
        self.log_path = root / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        """Start the server and wait until it answers /health; returns the seconds that took."""
        env = {
            **os.environ,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            # No background job runner: it is unused here, and its processes outlive the server's.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        command = [
            sys.executable, "-m", "mlflow", "server",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--workers", "1",
            "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
            "--artifacts-destination", str(self.artifacts),
        ]  # fmt: skip
        started = time.monotonic()
        with open(self.log_path, "ab") as log_file:
            # Own session: stop() can end the server and the uvicorn process it spawns together.
            self.proc = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        while not self._healthy():
            if self.proc.poll() is not None or time.monotonic() - started > STARTUP_TIMEOUT_S:
                self.stop()
                raise RuntimeError(f"mlflow server did not answer on {self.uri}:\n{self._log_tail()}")
            time.sleep(0.25)
        return time.monotonic() - started

    def stop(self) -> None:
        """SIGTERM (the server forwards it to uvicorn), then SIGKILL to the session it leads."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def _log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]
