"""``python app.py`` in a subprocess for the UI tests (tests/test_app.py, tests/test_app_browser.py).

One server serves both test files: :func:`shared` starts it on the first call (a free port, PNGs written under the
session's temporary folder) and returns the same one afterwards; :func:`stop_shared` ends it. Each test file has a
session-scoped fixture that calls both, so the server lives from the first UI test to the end of the session and is
killed then (or when the fixture's teardown runs after a failure).
"""

import atexit
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STARTUP_SECONDS = 180  # imports of torch, diffusers and gradio take ~15 s on 2 busy cores


@dataclass
class AppServer:
    url: str
    process: subprocess.Popen
    log: Path

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """End the server (its process group: gradio may start helpers), politely first."""
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start(workdir: Path) -> AppServer:
    """Start ``python app.py`` on a free port and wait until its page answers; raise with the server's log otherwise.

    The port and address are given as Gradio's GRADIO_SERVER_PORT / GRADIO_SERVER_NAME, not as flags, so every UI
    test also checks that app.py honours them."""
    port = free_port()
    log = workdir / "app.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1",
           "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1"}
    command = [sys.executable, str(ROOT / "app.py"), "--outdir", str(workdir / "outputs")]
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = AppServer(f"http://127.0.0.1:{port}/", process, log)
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with status {process.returncode} before answering:\n"
                               f"{server.log_tail()}")
        if answers(server.url):
            return server
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"app.py did not answer on {server.url} within {STARTUP_SECONDS} s:\n{server.log_tail()}")


_shared: AppServer | None = None


def shared(tmp_path_factory) -> AppServer:
    """The session's server, started on first use."""
    global _shared
    if _shared is None or _shared.process.poll() is not None:
        _shared = start(tmp_path_factory.mktemp("app"))
        atexit.register(stop_shared)  # also when pytest ends without tearing fixtures down
    return _shared


def stop_shared() -> None:
    global _shared
    if _shared is not None:
        _shared.stop()
        _shared = None
