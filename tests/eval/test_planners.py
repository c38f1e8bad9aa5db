"""The inference planners (``wallwm_pretrain.eval.planners``) against a stand-in policy: what
conditions each plan, how many steps run, when the script advances, and how the command line's
options choose planners per mode."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from wallwm_pretrain.eval.planners import (
    PLANNERS, Chunks, PredictedEvents, Scene, ScriptedEvents, Task, UnifiedChunks, choose, planner_for, planners_of,
    served_modes,
)
from wallwm_pretrain.eval.policy import Plan, PolicyError

DEFAULTS = {"events": ["script"], "context": ["atomic"]}
SCRIPT = [("reach", "reach for the puck"), ("grasp", "grasp the puck"), ("place", "place the puck")]


@dataclass
class FakePolicy:
    """Plans ``horizon`` steps whose actions are the step index; remaining times come from a list."""

    mode: str
    remaining: list[float]
    horizon: int = 8
    views: tuple = ()
    calls: list = None

    def __post_init__(self):
        self.calls = []

    def _plan(self) -> Plan:
        return Plan(np.arange(self.horizon, dtype=np.float32)[:, None], self.remaining[len(self.calls) - 1])

    def plan(self, frame, state, caption, generator):
        self.calls.append(("plan", caption))
        return self._plan()

    def plan_chunk(self, history, frame, state, context, generator):
        self.calls.append(("chunk", len(history), context.source, context.caption, list(context.done or [])))
        return self._plan()

    def history_steps(self):
        return [8, 4]


def scene(step=0, history=()):
    z = np.zeros((1, 2, 2, 3), np.uint8)
    return Scene(z, z, np.zeros(2, np.float32), step, list(history))


def test_scripted_events_run_the_predicted_steps_and_advance_when_the_event_ends():
    policy = FakePolicy("event", [20.0, 3.4, 0.2, 5.0])
    p = ScriptedEvents(policy, max_plans_per_event=4)
    p.start(Task("move the puck", SCRIPT), None)
    got = [p.next(scene()) for _ in range(4)]
    assert [len(d.actions) for d in got] == [8, 3, 1, 5]  # round(remaining) within [1, horizon]
    assert [d.caption for d in got] == ["reach for the puck", "reach for the puck", "grasp the puck", "place the puck"]
    assert [d.label for d in got] == ["reach", "reach", "grasp", "place"]
    assert p.history_steps() is None and all(d.predicted is None for d in got)


def test_the_script_moves_on_after_max_plans_and_repeats_its_last_event():
    policy = FakePolicy("event", [100.0] * 7)
    p = ScriptedEvents(policy, max_plans_per_event=2)
    p.start(Task("t", SCRIPT), None)
    assert [p.next(scene()).label for _ in range(6)] == ["reach", "reach", "grasp", "grasp", "place", "place"]
    p.start(Task("t", SCRIPT), None)  # a new episode starts the script again
    assert p.next(scene()).label == "reach"


def test_chunks_run_whole_plans_of_the_instruction():
    policy = FakePolicy("chunk", [1.0, 1.0])
    p = Chunks(policy)
    p.start(Task("move the puck", SCRIPT), None)
    d = p.next(scene())
    assert len(d.actions) == 8 and d.caption == "move the puck" and d.label == "chunk"
    assert policy.calls == [("plan", "move the puck")] and p.tag == ""


def test_unified_chunks_read_history_and_their_context_source():
    policy = FakePolicy("unified", [2.0, 2.0])
    p = UnifiedChunks(policy, "global")
    assert p.history_steps() == [8, 4] and p.tag == "global context"
    p.start(Task("move the puck", SCRIPT, done=["open the drawer"]), None)
    first, second = p.next(scene(0, ["h1", "h2"])), p.next(scene(8, ["h1", "h2"]))
    assert len(first.actions) == 8 and first.caption == "global: reach for the puck"
    assert policy.calls == [("chunk", 2, "global", "reach for the puck", ["open the drawer"]),
                            ("chunk", 2, "global", "grasp the puck", ["open the drawer", "reach for the puck"])]
    assert second.caption == "global: grasp the puck"
    atomic = UnifiedChunks(FakePolicy("unified", [2.0]), "atomic")
    atomic.start(Task("t", SCRIPT), None)
    assert atomic.next(scene()).caption == "reach for the puck"
    with pytest.raises(PolicyError, match="context must be atomic, global or staircase, got 'local'"):
        UnifiedChunks(policy, "local")


class FakeConditioner:
    views: list = []
    image_size = 2

    def __init__(self, answers):
        self.answers, self.seen = answers, []

    def next_event(self, frame, state, task, done):
        from wallwm_pretrain.model.conditioner.model import Prediction

        self.seen.append(list(done))
        caption, remaining = self.answers[len(self.seen) - 1]
        return Prediction(caption, remaining, None)


def test_predicted_events_follow_the_conditioner():
    cond = FakeConditioner([("reach", 3.0), ("grasp", 30.0), ("grasp", 2.0)])
    p = PredictedEvents(FakePolicy("event", [99.0] * 3), conditioner=cond)
    p.start(Task("t", [], done=["before"]), None)
    got = [p.next(scene(step)) for step in (0, 3, 11)]
    assert [len(d.actions) for d in got] == [3, 8, 2] and [d.label for d in got] == ["predicted"] * 3
    assert [d.predicted for d in got] == [{"step": 0, "caption": "reach", "remaining": 3.0},
                                          {"step": 3, "caption": "grasp", "remaining": 30.0},
                                          {"step": 11, "caption": "grasp", "remaining": 2.0}]
    assert cond.seen == [["before"], ["before", "reach"], ["before", "reach"]]
    with pytest.raises(PolicyError, match="--conditioner"):
        PredictedEvents(FakePolicy("event", []))


def test_the_registry_chooses_per_mode_and_refuses_options_the_mode_does_not_read():
    assert planners_of("event") == [ScriptedEvents, PredictedEvents] and planners_of("chunk") == [Chunks]
    assert set(PLANNERS) == {ScriptedEvents, PredictedEvents, Chunks, UnifiedChunks}
    assert served_modes() == ["event", "chunk"]
    assert choose("event", {"events": ["predicted", "script"], "context": ["atomic"]}, DEFAULTS) == [
        ("predicted", PredictedEvents), ("script", ScriptedEvents)]
    assert choose("".join(["uni", "fied"]), {"events": ["script"], "context": ["global", "atomic"]}, DEFAULTS) == [
        ("global", UnifiedChunks), ("atomic", UnifiedChunks)]
    assert choose("chunk", DEFAULTS, DEFAULTS) == [("chunk", Chunks)]
    with pytest.raises(ValueError, match="--context is read in unified mode; this policy plans in event mode"):
        choose("event", {"events": ["script"], "context": ["global"]}, DEFAULTS)
    with pytest.raises(ValueError, match="--events is read in event mode; this policy plans in unified mode"):
        choose("unified", {"events": ["predicted"], "context": ["atomic"]}, DEFAULTS)
    with pytest.raises(ValueError, match="--events is read in event mode; this policy plans in chunk mode .* neither"):
        choose("chunk", {"events": ["predicted"], "context": ["atomic"]}, DEFAULTS)
    with pytest.raises(PolicyError, match="conditioner-mode checkpoints do not plan actions"):
        planners_of("conditioner")
    assert isinstance(planner_for(FakePolicy("unified", [])), UnifiedChunks)
    assert isinstance(planner_for(FakePolicy("event", []), "predicted", conditioner=FakeConditioner([])),
                      PredictedEvents)


def test_the_server_takes_its_prompt_from_the_mode_planner_and_refuses_history_planners():
    from types import SimpleNamespace

    from wallwm_pretrain.serve.engine import PolicyEngine

    def stub(mode):
        return SimpleNamespace(views=["a"], num_views=1, mode=mode, image_size=4, state_dim=2)

    assert PolicyEngine(stub("event")).spec.text_meaning.startswith("the next event's description")
    assert PolicyEngine(stub("event")).planner.reports_remaining
    chunk = PolicyEngine(stub("chunk"))
    assert chunk.spec.text_meaning.startswith("the task instruction") and not chunk.planner.reports_remaining
    with pytest.raises(PolicyError, match=r"unified-mode plans read .*\(history frames\).* serves event and chunk mode"):
        PolicyEngine(stub("unified"))
