"""Fixtures of the server tests: a run store holding a copy of the shipped starter, and real ``cxr-serve`` processes."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from serve_helpers import API_KEY, REPO, STARTER

READY_WITHIN_S = 600  # TensorFlow's import and the model's first traces on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dockerfile_command() -> list[str]:
    """The image's entry command, as the Dockerfile's exec-form ``CMD`` gives it."""
    lines = [line for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("CMD ")]
    assert len(lines) == 1, "the Dockerfile has one CMD line"
    return json.loads(lines[0][4:])


@dataclass
class Server:
    """One ``cxr-serve`` process, its address and its log (stderr, kept in a file so nothing blocks)."""

    command: list[str]
    env: dict[str, str]
    log_path: Path
    port: int
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        self.log_file = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.command, cwd=REPO, env=self.env, stdout=self.log_file,
                                     stderr=subprocess.STDOUT)
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_WITHIN_S
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the server exited ({self.proc.returncode}):\n{self.log()[-3000:]}"
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        pytest.fail(f"the server was not ready within {READY_WITHIN_S} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        self.log_file.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()


@pytest.fixture(scope="session")
def serve_store(tmp_path_factory) -> Path:
    """A run store with a copy of the shipped starter (its films are the repository's sample/ films)."""
    store = tmp_path_factory.mktemp("serve-store")
    shutil.copytree(REPO / "models" / STARTER, store / STARTER)
    return store


@pytest.fixture(scope="session")
def servers(serve_store, tmp_path_factory):
    """Two servers of the starter, started together: ``main`` runs the Dockerfile's entry command (keys from
    the environment, as a secret gives them; bound to 127.0.0.1 here), ``limited`` runs ``python -m core.serve``
    without keys, one request at a time and an 8 s time limit."""
    logs = tmp_path_factory.mktemp("serve-logs")
    env = {k: v for k, v in os.environ.items() if k not in ("CXR_SERVE_API_KEYS", "PORT")}
    env.update(CXR_STUDIO_RUNS=str(serve_store), TF_CPP_MIN_LOG_LEVEL="2")
    command = dockerfile_command()
    script = Path(sys.executable).with_name(command[0])
    entry = [str(script)] if script.is_file() else [sys.executable, "-m", "core.serve"]
    main_port, limited_port = free_port(), free_port()
    main = Server([*entry, *command[1:], "--host", "127.0.0.1"],
                  {**env, "PORT": str(main_port), "CXR_SERVE_API_KEYS": API_KEY}, logs / "main.log", main_port)
    limited = Server([sys.executable, "-m", "core.serve", STARTER, "--no-auth", "--port", str(limited_port),
                      "--max-concurrent", "1", "--timeout", "8"], env, logs / "limited.log", limited_port)
    started = [main.start(), limited.start()]
    try:
        for server in started:
            server.wait_ready()
        yield {"main": main, "limited": limited}
    finally:
        for server in started:
            server.stop()


@pytest.fixture()
def client(servers):
    with httpx.Client(base_url=servers["main"].url, timeout=120, headers={"X-API-Key": API_KEY}) as http:
        yield http
