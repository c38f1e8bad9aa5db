"""Time of one mutant's tests: through the warm server (``mutation/warm.py``) against a fresh
interpreter (``WARM=0``), in one run.

Starts the server once, then runs the same pytest selection ``--rounds`` times each way,
alternating the order in every round so that the machine's load falls on both alike. Prints
every time, the medians and their ratio (cold / warm).

    python bench/mutation_warm.py --rounds 5 tests/optim/test_optim_muon.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTEST = ["-x", "-q", "-p", "no:cacheprovider"]


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {done.returncode}): the tests must pass unmutated")
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tests", nargs="+", help="pytest paths (what a mutation config's test-command runs)")
    ap.add_argument("--rounds", type=int, default=5, help="runs each way (default 5)")
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "PYTHONPATH": str(ROOT) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")}
    with tempfile.TemporaryDirectory() as tmp:
        sock = str(Path(tmp) / "warm.sock")
        server = subprocess.Popen([sys.executable, "mutation/warm.py", "serve", sock], cwd=ROOT, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while not os.path.exists(sock):
                if server.poll() is not None:
                    raise SystemExit("the warm server did not start")
                time.sleep(0.2)
            warm_cmd = [sys.executable, "mutation/warm.py", "run", sock, *PYTEST, *args.tests]
            cold_cmd = [sys.executable, "-m", "pytest", *PYTEST, *args.tests]
            warm, cold = [], []
            for r in range(args.rounds):
                order = [(warm_cmd, warm), (cold_cmd, cold)]
                for cmd, out in order if r % 2 == 0 else reversed(order):
                    out.append(timed(cmd, env))
        finally:
            server.terminate()
            server.wait()
    print("warm (s):", " ".join(f"{t:.2f}" for t in warm))
    print("cold (s):", " ".join(f"{t:.2f}" for t in cold))
    w, c = statistics.median(warm), statistics.median(cold)
    print(f"median warm {w:.2f} s, cold {c:.2f} s: cold / warm = {c / w:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
