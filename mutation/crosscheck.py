"""Re-run some mutants of a finished session in fresh interpreters and compare the outcomes.

    python mutation/crosscheck.py mutation/NAME.toml runs/mutation/NAME.sqlite [N] [SEED]

The sessions of ``run.sh`` are run through the warm server (``warm.py``); this draws N of their
mutants at random (seeded), applies each in place, runs the config's own test command in a
fresh interpreter (cosmic-ray's ``mutate_and_test``, as ``WARM=0`` would) and restores the
module. It prints each outcome beside the stored one and exits 1 on any disagreement.
"""

from __future__ import annotations

import random
import sys

from cosmic_ray.config import load_config
from cosmic_ray.mutating import mutate_and_test
from cosmic_ray.work_db import WorkDB, use_db


def main(config_file: str, session: str, n: int = 20, seed: int = 0) -> int:
    cfg = load_config(config_file)
    with use_db(session, WorkDB.Mode.open) as db:
        done = sorted(db.completed_work_items, key=lambda ir: ir[0].job_id)
    drawn = random.Random(seed).sample(done, min(n, len(done)))
    disagree = 0
    for item, stored in drawn:
        cold = mutate_and_test(item.mutations, cfg.test_command, cfg.timeout)
        m = item.mutations[0]
        same = cold.test_outcome == stored.test_outcome
        disagree += not same
        print(f"{m.module_path}:{m.start_pos[0]} {m.operator_name} #{m.occurrence}: "
              f"warm {stored.test_outcome.value}, cold {cold.test_outcome.value}{'' if same else '  <-- differs'}")
    print(f"{len(drawn) - disagree} / {len(drawn)} agree")
    return 1 if disagree else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:])))
