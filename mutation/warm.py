"""A warm pytest for mutation runs: import the heavy libraries once, fork one child per mutant.

    python mutation/warm.py serve SOCKET        import torch, numpy, pytest ... then serve
    python mutation/warm.py run SOCKET ARGS...  run ``pytest ARGS`` in a fresh fork, exit with its code

Each mutant's test run spends much of its time starting Python and importing torch, megatron
and the data libraries, not in the tests (about 3.7 of 7.9 seconds for the Muon tests on a 2-core
machine). The server imports those once; for every request it forks, and the child runs
``pytest.main`` in the client's working folder with the client's environment. The server never
imports ``wallwm_pretrain``: each child imports the project afresh from disk, so it sees the
module as cosmic-ray has just mutated it. Written by hand because the pytest daemons we know of
reload modules in place, which is what a mutation run must not do (a stale module is a
surviving mutant that is not one).

A child killed by a signal other than its own timeout is reported as exit code 70 and logged
by the server: it would otherwise count as a killed mutant. A run reports no such line when
every kill was a test failure.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys

# What every guarding test imports; ``wallwm_pretrain`` is deliberately not among them.
WARM_IMPORTS = (
    "numpy", "torch", "torch.distributed", "torch.nn.functional", "safetensors.torch", "pytest",
    "omegaconf", "webdataset", "megatron.core", "megatron.core.tensor_parallel",
    "megatron.core.transformer", "mlflow",
)
CRASH = 70  # EX_SOFTWARE: the child died of a signal it did not send itself


def _send(conn: socket.socket, obj) -> None:
    data = json.dumps(obj).encode()
    conn.sendall(struct.pack("!I", len(data)) + data)


def _recv(conn: socket.socket):
    head = b""
    while len(head) < 4:
        part = conn.recv(4 - len(head))
        if not part:
            raise ConnectionError("closed")
        head += part
    size = struct.unpack("!I", head)[0]
    data = b""
    while len(data) < size:
        part = conn.recv(size - len(data))
        if not part:
            raise ConnectionError("closed")
        data += part
    return json.loads(data)


def _child(request: dict) -> None:
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    sys.path[:0] = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    signal.alarm(int(request["timeout"]))  # SIGALRM: a mutant that hangs the tests is killed
    import pytest

    os._exit(int(pytest.main(request["args"])))


def serve(path: str) -> None:
    import importlib

    for name in WARM_IMPORTS:
        importlib.import_module(name)
    assert not any(m.startswith("wallwm_pretrain") for m in sys.modules), "the server must not import the project"
    if os.path.exists(path):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    print(f"warm pytest serving on {path}", flush=True)
    while True:
        conn, _ = server.accept()
        with conn:
            try:
                request = _recv(conn)
            except ConnectionError:
                continue
            pid = os.fork()
            if pid == 0:
                server.close()
                conn.close()
                try:
                    _child(request)
                finally:
                    os._exit(CRASH)
            _, status = os.waitpid(pid, 0)
            if os.WIFEXITED(status):
                code = os.WEXITSTATUS(status)
            elif os.WTERMSIG(status) == signal.SIGALRM:
                code = 124  # a hang is a detected mutant, as cosmic-ray counts its own timeouts
            else:
                code = CRASH
            if code == CRASH:
                print(f"crash: {request['args']}", flush=True)
            elif code not in (0, 1):  # 2: the mutated module failed to import, 124: a hang
                print(f"exit {code}: {request['args']}", flush=True)
            try:
                _send(conn, code)
            except OSError:
                pass  # the client was killed (cosmic-ray's own timeout)


def run(path: str, args: list[str], timeout: float = 100.0) -> int:
    # timeout: under the 120 s the mutation configs give cosmic-ray, so that a hung child is gone
    # before cosmic-ray gives up on its client and sends the next mutant.
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(path)
    _send(conn, {"cwd": os.getcwd(), "env": dict(os.environ), "args": args, "timeout": timeout})
    return int(_recv(conn))


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "serve":
        serve(argv[1])
        return 0
    if len(argv) >= 2 and argv[0] == "run":
        return run(argv[1], argv[2:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
