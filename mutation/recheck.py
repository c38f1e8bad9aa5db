"""Re-run the surviving mutants of a session against the current tests (after adding tests).

    python mutation/recheck.py mutation/NAME.toml runs/mutation/NAME.sqlite

Each survivor is applied in place, tested with the config's test command and restored (what
``cosmic-ray exec`` does for every mutant); its stored result is replaced.
"""

from __future__ import annotations

import sys

from cosmic_ray.config import load_config
from cosmic_ray.mutating import mutate_and_test
from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import TestOutcome


def main(config_file: str, session: str) -> int:
    cfg = load_config(config_file)
    with use_db(session, WorkDB.Mode.open) as db:
        survivors = [item for item, result in db.completed_work_items if result.test_outcome == TestOutcome.SURVIVED]
        for item in survivors:
            result = mutate_and_test(item.mutations, cfg.test_command, cfg.timeout)
            db.set_result(item.job_id, result)
            m = item.mutations[0]
            print(f"{m.module_path}:{m.start_pos[0]} {m.operator_name} #{m.occurrence}: {result.test_outcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
