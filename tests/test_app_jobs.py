"""The web UI's start-up refusals (a bad or busy port) and its job flow: a request's memory plan runs beside other
requests, so a small request does not wait for a large one's planning (linfuse.ui.jobs).

The start-up tests run ``python app.py`` as a user would; it stops before gradio is imported. The job test serves
the real app in this process (gradio_client over HTTP, the bundled student), with the real planner held at a gate
for the large request: planning a refused 16384² job takes 30 s to minutes on a CPU, too long for the suite, and
the gate makes "while it is being planned" exact.
"""

import importlib.util
import os
import socket
import subprocess
import sys
import threading
import time

import app_server
import pytest
from gradio_client import Client
from PIL import Image

from linfuse.ui import AppSettings, generate_tab

SMALL = ("red apple on a blue background", "", 64, 64, 2, 5.0, 0, "student", "auto")
LARGE = ("dog face on a yellow background", "", 256, 256, 10, 5.0, 1, "student", "auto")  # progressive: planned


def run_app(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(app_server.ROOT / "app.py"), *args], cwd=app_server.ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("args", "env", "message"), [
    ((), {"GRADIO_SERVER_PORT": "abc"},
     "app.py: error: GRADIO_SERVER_PORT must be a port number from 1 to 65535; got 'abc' (or pass --port)"),
    ((), {"GRADIO_SERVER_PORT": "70000"}, "GRADIO_SERVER_PORT must be a port number from 1 to 65535; got '70000'"),
    (("--port", "0"), {}, "app.py: error: --port must be a port number from 1 to 65535; got 0"),
    (("--host", "no-such-host.invalid", "--port", "7860"), {},
     "cannot resolve the address 'no-such-host.invalid' (--host or GRADIO_SERVER_NAME)"),
])
def test_a_bad_port_or_address_stops_the_app_with_one_line(args, env, message):
    started = time.monotonic()
    result = run_app(*args, **env)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert time.monotonic() - started < 30  # refused before torch, diffusers and gradio are imported


def test_a_busy_port_stops_the_app_with_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_app(GRADIO_SERVER_PORT=str(port))
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"app.py: error: port {port} on 127.0.0.1 is already in use (another server?); choose another with --port "
        "or GRADIO_SERVER_PORT"]


def test_a_flag_wins_over_a_bad_port_variable_and_gradio_is_not_told_it(monkeypatch):
    app = load_app()
    monkeypatch.setenv("GRADIO_SERVER_PORT", "abc")
    assert app.parse_args(["--port", "8123"]).port == 8123


def load_app():
    spec = importlib.util.spec_from_file_location("linfuse_app_jobs", app_server.ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def served(tmp_path, monkeypatch):
    """The app in this process, with the planner of 256×256 jobs held until the test opens the gate."""
    planning, gate = threading.Event(), threading.Event()
    real = generate_tab.checked_stages

    def gated(pipe, params, options):
        if params.width == LARGE[2]:
            planning.set()
            gate.wait(300)
        return real(pipe, params, options)

    monkeypatch.setattr(generate_tab, "checked_stages", gated)
    app = load_app()
    demo = app.queued(app.build_app(AppSettings(outdir=tmp_path, device="cpu")))
    demo.launch(server_name="127.0.0.1", server_port=app_server.free_port(), prevent_thread_lock=True,
                ssr_mode=False, quiet=True)
    try:
        yield Client(demo.local_url, verbose=False), planning, gate
    finally:
        gate.set()
        demo.close()


def test_a_small_request_is_not_held_up_by_a_large_ones_planning(served):
    client, planning, gate = served
    client.predict(*SMALL, api_name="/generate")  # loads the student: both requests below find it loaded
    large = client.submit(*LARGE, api_name="/generate")
    assert planning.wait(120), "the large request never reached its memory plan"
    started = time.monotonic()
    small = client.submit(*SMALL, api_name="/generate")
    image, *_ = small.result(timeout=60)  # before the change: stuck behind the large request's planning
    waited = time.monotonic() - started
    assert not large.done(), "the large request should still be planning"
    with Image.open(image) as shown:
        assert shown.size == (64, 64)
    gate.set()
    image, *_ = large.result(timeout=300)
    with Image.open(image) as shown:
        assert shown.size == (256, 256)
    print(f"small request served in {waited:.1f} s while the large one was being planned")
