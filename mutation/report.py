"""Score of one cosmic-ray session: killed / total, and every surviving mutant with its diff.

    python mutation/report.py runs/mutation/NAME.sqlite NAME
"""

from __future__ import annotations

import sys

from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import TestOutcome


def main(session: str, name: str) -> int:
    with use_db(session, WorkDB.Mode.open) as db:
        done = list(db.completed_work_items)
        pending = db.num_work_items - len(done)
    outcomes = [result.test_outcome for _, result in done]
    killed = sum(o == TestOutcome.KILLED for o in outcomes)
    incompetent = sum(o == TestOutcome.INCOMPETENT for o in outcomes)
    survivors = [(item, result) for item, result in done if result.test_outcome == TestOutcome.SURVIVED]
    total = len(done) - incompetent
    score = 100.0 * killed / total if total else float("nan")
    print(f"{name}: killed {killed} / {total} ({score:.1f}%), survived {len(survivors)}, "
          f"incompetent {incompetent}, not run {pending}")
    for item, result in sorted(survivors, key=lambda ir: ir[0].mutations[0].start_pos):
        m = item.mutations[0]
        print(f"\n-- survivor {m.module_path}:{m.start_pos[0]} {m.operator_name} #{m.occurrence}")
        print("\n".join(line for line in (result.diff or "").splitlines() if line.startswith(("+", "-"))
                        and not line.startswith(("+++", "---"))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
