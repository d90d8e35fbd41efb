"""Shared pieces of the MONAI Label deployment tests: the server's environment and bounded HTTP calls (standard
library only)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVER_START_TIMEOUT_S = 180.0
REQUEST_TIMEOUT_S = 120.0


def monailabel_venv() -> Path:
    """The MONAI Label environment (``NOISYSEG_MONAILABEL_VENV``, default ``<repo>/.venv-monailabel``)."""
    return Path(os.environ.get("NOISYSEG_MONAILABEL_VENV", REPO_ROOT / ".venv-monailabel"))


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without PYTHONPATH: neither process may see this repository's package."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
            timeout: float = REQUEST_TIMEOUT_S) -> tuple[int, bytes]:
    """``(status, body)`` of one HTTP request; HTTP errors are returned, not raised."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def multipart(field: str, filename: str, payload: bytes) -> tuple[bytes, str]:
    """A one-file ``multipart/form-data`` body and its content type."""
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + payload + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def log_tail(path: Path, lines: int = 60) -> str:
    text = path.read_text(errors="replace") if path.is_file() else ""
    return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def running_server(python: Path, app: Path, studies: Path, root: Path, model_name: str,
                   extra_conf: Sequence[str] = ()) -> Iterator[tuple[str, dict[str, Any], Path]]:
    """A MONAI Label server on 127.0.0.1 serving ``app`` on ``studies`` (logs in ``root/server.log``); yields
    ``(base_url, /info/ answer, log path)`` once it answers, and stops its process group at exit. A server that exits
    or is not ready within :data:`SERVER_START_TIMEOUT_S` fails the test with the log's tail."""
    port = free_port()
    log_path = root / "server.log"
    command = [
        str(python), "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies),
        "--host", "127.0.0.1", "--port", str(port),
        "--conf", "models", model_name, "--conf", "zoo_source", "local", "--conf", "sam2", "false",
        "--conf", "preload", "false", *extra_conf,
    ]
    env = clean_env(MONAI_LABEL_SESSION_PATH=str(root / "sessions"), MONAI_LABEL_AUTO_UPDATE_SCORING="false")
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        info: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            if server.poll() is not None:
                pytest.fail(f"MONAI Label server exited with {server.returncode}:\n{log_tail(log_path)}")
            try:
                status, body = request("GET", f"{base_url}/info/", timeout=5)
                if status == 200:
                    info = json.loads(body)
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(1.0)
        if info is None:
            pytest.fail(f"MONAI Label server not ready after {SERVER_START_TIMEOUT_S} s:\n{log_tail(log_path)}")
        yield base_url, info, log_path
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # the group this server started (server + its task workers)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=30)
