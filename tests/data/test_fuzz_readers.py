"""The fast subset of the reader fuzzing (bench/fuzz_readers.py; the long run is `make fuzz`).

Run in a child process because the fuzz loop caps its own address space (a reader that
allocates from a lying header fails there with MemoryError instead of exhausting the machine).
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CASES = 1000  # per target


def test_readers_survive_the_mutation_loop():
    code = (
        "import json, sys; sys.path.insert(0, 'bench'); import fuzz_readers as f; "
        f"r = f.run({CASES}, seed=7); print(json.dumps({{'outcomes': r.outcomes, 'failures': r.failures}}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["failures"] == []
    assert set(report["outcomes"]) == {"npy", "tar", "sample", "index", "events", "lerobot"}
    for target, outcome in report["outcomes"].items():
        # the mutations reach both answers of every reader, or the loop tests nothing
        assert sum(outcome.values()) == CASES and outcome["accepted"] > 0 and outcome["refused"] > 0, target
