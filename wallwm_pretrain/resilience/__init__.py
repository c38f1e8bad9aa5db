"""Surviving a cluster: non-finite steps, stop requests (signals, wall time), hung ranks.

- :mod:`.nonfinite`: the book of skipped (non-finite) steps and the limits that stop a run.
- :mod:`.stop`: SIGUSR1/SIGTERM set a flag (nothing else happens in the handler); a wall-time
  deadline that keeps back the longest save and step measured so far.
- :mod:`.agree`: one small collective per step in which every rank says whether its step was
  non-finite and whether it wants to stop, so all ranks skip, save and exit together.
- :mod:`.exit`: the exit code and the exit record a launcher reads to decide on a requeue.
- :mod:`.watchdog`: per-rank heartbeats in the run folder; a rank stuck in one phase, or a
  peer that went silent, ends the run with a message naming rank, step and phase.

Nothing here creates process groups; the collective runs on the default (world) group. The
package imports nothing itself: ``stop`` and ``exit`` need only the standard library, so the
entry point installs its signal handlers before torch is imported.
"""
