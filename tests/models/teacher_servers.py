"""Real HTTP servers on 127.0.0.1 for the teacher-backend tests: a process handle with stats, fault injection and
SIGKILL (the repo's test server in ``openai_server.py``, or any command such as ``transformers serve``)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SERVER = Path(__file__).with_name("openai_server.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A server process on 127.0.0.1: ``url`` (the /v1 root), ``stats()``, ``faults()``, ``kill()``, ``start()``."""

    def __init__(self, cmd: list[str], port: int, env: dict[str, str], log: Path) -> None:
        self.cmd, self.port, self.env, self.log = cmd, port, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 180.0) -> Server:
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=f, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"server did not come up in {timeout} s: {self.log.read_text()[-3000:]}")

    def _req(self, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data,
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def stats(self) -> dict[str, Any]:
        return self._req("/_stats")

    def faults(self, queue: list[str] | None = None, delay_s: float = 0.0) -> None:
        self._req("/_faults", {"queue": queue or [], "delay_s": delay_s})

    def reset(self) -> None:
        self._req("/_reset", {})

    def kill(self) -> None:
        """SIGKILL: the process dies with requests in flight, as a crashed or preempted server does."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra)
    return env


def make_server(model: Path, log: Path, *, port: int | None = None, api_key: str | None = None) -> Server:
    """The repo's OpenAI-compatible test server (not started); with ``api_key`` it demands that bearer key."""
    port = port or free_port()
    # one torch thread: on a shared, busy CPU more threads make each request several times slower
    cmd = [sys.executable, str(SERVER), "--model", str(model), "--port", str(port), "--threads", "1"]
    extra: dict[str, str] = {}
    if api_key is not None:
        cmd += ["--api-key-env", "CURATE_TEST_SERVER_KEY"]
        extra["CURATE_TEST_SERVER_KEY"] = api_key
    return Server(cmd, port, _env(**extra), log)


API_KEY = "sk-test-0123456789abcdef"  # a made-up key for the local server; never a real secret
