"""``python -m wallwm_pretrain.serve`` as a user runs it: a real process, a free port picked by the
OS, the health check, metadata and one request, then a clean stop on SIGINT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from wallwm_pretrain.client import PolicyClient

ROOT = Path(__file__).resolve().parents[2]


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return env


def test_serve_cli_starts_answers_and_stops(event_run, obs_factory):
    proc = subprocess.Popen([sys.executable, "-m", "wallwm_pretrain.serve", "--ckpt", str(event_run), "--port", "0",
                             "--threads", "1", "--max-batch", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    try:
        line = proc.stdout.readline()  # blocks until the server is listening (or has died)
        assert line.startswith("serving "), (line, proc.stderr.read() if proc.poll() is not None else "")
        url = line.split(" on ", 1)[1].split(";", 1)[0]
        assert url.startswith("ws://127.0.0.1:")
        port = int(url.rsplit(":", 1)[1])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz") as resp:
            assert resp.read() == b"OK\n"
        with PolicyClient(url) as client:
            assert client.metadata["server"]["max_batch"] == 2
            assert client.infer(obs_factory(0, seed=1))["actions"].shape == (48, 4)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert "stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_serve_help_documents_every_flag():
    from wallwm_pretrain.serve.__main__ import build_parser

    parser = build_parser()
    for action in parser._actions:
        assert action.help and action.help.strip(), f"{action.option_strings} has no help"
    text = parser.format_help()
    assert "example:" in text and "/healthz" in text and "127.0.0.1" in text


def test_serve_cli_bad_checkpoint_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "wallwm_pretrain.serve", "--ckpt", str(tmp_path / "nope")],
                          capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: "), proc.stderr
    assert "nope" in proc.stderr and "Traceback" not in proc.stderr


