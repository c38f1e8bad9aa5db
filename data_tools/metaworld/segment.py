"""Per-step expert phases -> nested, non-overlapping L3/L2/L1 events with captions.

Raw phase labels flicker where a condition sits on its threshold (a hand that starts right
above the puck goes descend, reach, descend in three steps). Runs shorter than
``min_steps`` are therefore merged into their longer neighbour, shortest first, before runs
become L1 events. Real regressions survive (a slipped puck sends pick-place back to reach):
such a repeated primitive is a new event captioned "... again", and its subtask a new L2
event, which is the long tail the data balancing wants to keep. L1 events tile the episode;
L2 events are maximal runs of L1 events of one subtask; one L3 event spans the episode.

Captions: the episode draws one name per noun slot (the object is "the puck" throughout an
episode) and a template per event, all from its own seeded generator.
"""

from __future__ import annotations

import numpy as np

from sim.metaworld.tasks import TaskSpec

from ..events import Event

Run = tuple[str, int, int]  # (label, start, end), end exclusive


def to_runs(labels: list[str]) -> list[Run]:
    runs: list[Run] = []
    for t, label in enumerate(labels):
        if runs and runs[-1][0] == label:
            runs[-1] = (label, runs[-1][1], t + 1)
        else:
            runs.append((label, t, t + 1))
    return runs


def _coalesce(runs: list[Run]) -> list[Run]:
    out: list[Run] = []
    for label, s, e in runs:
        if out and out[-1][0] == label:
            out[-1] = (label, out[-1][1], e)
        else:
            out.append((label, s, e))
    return out


def smooth_runs(runs: list[Run], min_steps: int) -> list[Run]:
    """Merge runs shorter than min_steps into their longer neighbour (ties: the earlier one)."""
    runs = _coalesce(runs)
    while len(runs) > 1:
        lengths = [e - s for _, s, e in runs]
        i = int(np.argmin(lengths))
        if lengths[i] >= min_steps:
            break
        prev_len = lengths[i - 1] if i > 0 else -1
        next_len = lengths[i + 1] if i + 1 < len(runs) else -1
        j = i - 1 if prev_len >= next_len else i + 1
        label = runs[j][0]
        s, e = min(runs[i][1], runs[j][1]), max(runs[i][2], runs[j][2])
        lo, hi = min(i, j), max(i, j)
        runs = _coalesce(runs[:lo] + [(label, s, e)] + runs[hi + 1:])
    return runs


def _caption(rng: np.random.Generator, templates: tuple[str, ...], names: dict[str, str],
             again: bool) -> str:
    text = templates[int(rng.integers(len(templates)))].format(**names)
    return f"{text} again" if again else text


def episode_events(ep: int, spec: TaskSpec, labels: list[str], rng: np.random.Generator,
                   min_steps: int) -> tuple[str, list[Event]]:
    """(L3 task caption, events) for one episode whose step t has phase labels[t]."""
    if not labels:
        raise ValueError(f"{spec.name} episode {ep}: no steps to segment")
    unknown = sorted(set(labels) - set(spec.primitives))
    if unknown:
        raise ValueError(f"{spec.name} episode {ep}: phase(s) {unknown} have no caption templates")
    names = {slot: options[int(rng.integers(len(options)))] for slot, options in spec.nouns.items()}
    task = _caption(rng, spec.task, names, False)
    n = len(labels)
    runs = smooth_runs(to_runs(labels), min_steps)

    # L2: maximal stretches of L1 runs that belong to the same subtask.
    groups: list[tuple[int, int, int]] = []  # (subtask, first run, last run)
    for k, (label, _, _) in enumerate(runs):
        sub = spec.subtask_of(label)
        if groups and groups[-1][0] == sub:
            groups[-1] = (sub, groups[-1][1], k)
        else:
            groups.append((sub, k, k))

    events = [Event(ep, "L3", 0, 0, n, task, None)]
    seen_sub: set[int] = set()
    parent_of: dict[int, int] = {}
    for j, (sub, first, last) in enumerate(groups):
        templates = spec.subtasks[sub][0]
        caption = _caption(rng, templates, names, sub in seen_sub)
        seen_sub.add(sub)
        events.append(Event(ep, "L2", j, runs[first][1], runs[last][2], caption, 0))
        parent_of.update({k: j for k in range(first, last + 1)})
    seen_prim: set[str] = set()
    for k, (label, s, e) in enumerate(runs):
        caption = _caption(rng, spec.primitives[label], names, label in seen_prim)
        seen_prim.add(label)
        events.append(Event(ep, "L1", k, s, e, caption, parent_of[k]))
    return task, events


def primitive_sequence(labels: list[str], min_steps: int) -> list[str]:
    """The L1 primitive names of an episode, in order (for summaries and tests)."""
    return [label for label, _, _ in smooth_runs(to_runs(labels), min_steps)]
