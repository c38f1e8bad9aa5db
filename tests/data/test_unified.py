"""Unified mode's cooker and collate: windows over a whole episode that cross its events, the
atomic caption of the event a window mostly covers, history clamped at the episode start,
remaining steps, events done, context draws, and the batch layout with history first, each
against values written out here."""

from collections import Counter

import numpy as np
import pytest

from wallwm_pretrain.captions import decode_caption
from wallwm_pretrain.config import ConfigError, DataConfig
from wallwm_pretrain.data.collate import collate
from wallwm_pretrain.data.cookers import Normalizer, SampleError, cook_chunks
from wallwm_pretrain.data.modes import make_cooker
from wallwm_pretrain.data.extras import Extras
from wallwm_pretrain.data.unified import atomic_event, cook_unified, draw_context

K = 2
# events of the episode: [0, 5) "reach", [5, 7) "grasp", [7, 14) "lift" (14 steps)
EVENTS = [("reach", 0, 5), ("grasp", 5, 7), ("lift", 7, 14)]


def episode(t=14, latent_stride=0, text_width=0):
    steps = np.arange(t, dtype=np.float32)
    sample = {
        "__key__": "ep000003_L1",
        "__url__": "shard-000.tar",
        "json": {"caption": "stack", "task": "stack",
                 "events": [{"caption": c, "start": s, "end": e, "event_index": i, "level": "L1"}
                            for i, (c, s, e) in enumerate(EVENTS)]},
        "actions.npy": np.stack([steps, -steps], axis=1),
        "state.npy": np.zeros(3, np.float32),
        "states.npy": np.stack([steps, steps, steps], axis=1),
        # frame of step i shows the value i + 1 (0 would hide a missed copy into a zero batch)
        "frames.npy": ((steps + 1)[:, None, None, None, None] * np.ones((1, 1, 2, 2, 3))).astype(np.uint8),
    }
    if latent_stride:
        n = -(-t // latent_stride)
        sample["latents.npy"] = ((np.arange(n) + 1).astype(np.float16)[:, None, None, None, None]
                                 * np.ones((1, 1, 2, 1, 1), np.float16))
    if text_width:
        lengths = np.array([2, 3, 1], np.int32)
        states = np.zeros((3, 3, text_width), np.float16)
        for i, n in enumerate(lengths):
            states[i, :n] = i + 1
        sample["event_states.npy"], sample["event_states_len.npy"] = states, lengths
    return sample


def cfg(**kw):
    base = dict(mode="unified", chunk_horizon=4, history_latents=2, seed=5)
    return DataConfig(**{**base, **kw})


def cook(sample=None, epoch=0, extras=Extras(), **kw):
    return cook_unified(episode() if sample is None else sample, cfg(**kw), 64, Normalizer(), epoch,
                        extras, frame_stride=K)


def test_windows_tile_the_episode_and_cross_event_boundaries():
    windows = cook()
    assert [w.key for w in windows] == [f"ep000003_L1/w{a}" for a in (0, 4, 8, 12)]
    assert [w.length for w in windows] == [4, 4, 4, 2]
    steps = np.arange(14, dtype=np.float32)
    for w, a in zip(windows, (0, 4, 8, 12)):
        stop = min(14, a + 4)
        np.testing.assert_array_equal(w.actions[:, 0], steps[a:stop])
        np.testing.assert_array_equal(w.frames[:, 0, 0, 0, 0], steps[a:stop] + 1)
        np.testing.assert_array_equal(w.state, [a, a, a])
    # w4 holds steps 4..7: one of "reach", two of "grasp", one of "lift"
    assert decode_caption(windows[1].caption) == "grasp"


def test_atomic_caption_is_the_majority_event_ties_to_the_earlier():
    windows = cook()
    assert [decode_caption(w.caption) for w in windows] == ["reach", "grasp", "lift", "lift"]
    events = [{"start": s, "end": e} for _, s, e in EVENTS]
    assert atomic_event(events, 3, 7) == 0  # reach 2 steps, grasp 2 steps: the earlier
    assert atomic_event(events, 4, 8) == 1
    assert atomic_event(events, 6, 9) == 2


def test_remaining_counts_to_the_end_of_the_event_in_progress_and_done_lists_finished_ones():
    windows = cook()
    assert [w.remaining for w in windows] == [5, 1, 6, 2]  # reach ends 5, grasp 7, lift 14
    assert [w.done for w in windows] == [[], [], ["reach", "grasp"], ["reach", "grasp"]]
    assert {w.task for w in windows} == {"stack"}
    assert cook(chunk_horizon=6)[1].done == ["reach"]  # anchor 6: reach ended at 5


def test_history_frames_are_the_steps_before_the_anchor_clamped_to_frame_zero():
    windows = cook()  # M = 2, K = 2: four steps of history
    for w, a in zip(windows, (0, 4, 8, 12)):
        expected = np.maximum(np.arange(a - 4, a), 0) + 1
        assert w.history_frames.shape == (4, 1, 2, 2, 3)
        np.testing.assert_array_equal(w.history_frames[:, 0, 0, 0, 0], expected)
    np.testing.assert_array_equal(windows[0].history_frames, np.repeat(episode()["frames.npy"][:1], 4, axis=0))
    assert cook(history_latents=0)[2].history_frames.shape == (0, 1, 2, 2, 3)


def test_history_latents_are_the_latent_frames_before_the_anchor_clamped_at_zero():
    windows = cook(episode(latent_stride=K), extras=Extras(latent_stride=K))
    for w, a in zip(windows, (0, 4, 8, 12)):
        j = a // K
        np.testing.assert_array_equal(w.history_latents[:, 0, 0, 0, 0], np.maximum(np.arange(j - 2, j), 0) + 1)
        np.testing.assert_array_equal(w.latents[:, 0, 0, 0, 0], np.arange(j, j + -(-w.length // K)) + 1)


def test_atomic_text_states_are_the_majority_events_row():
    extras = Extras(empty_states=np.zeros((1, 4), np.float16))
    windows = cook(episode(text_width=4), extras=extras)
    for w, (event, n) in zip(windows, [(0, 2), (1, 3), (2, 1), (2, 1)]):
        assert w.caption_states.shape == (n, 4)
        assert (w.caption_states == event + 1).all()
    with pytest.raises(SampleError, match="sample ep000003_L1: key 'event_states.npy' must be float16"):
        cook(extras=extras)


def test_context_draws_are_deterministic_per_window_and_follow_the_mix():
    assert {w.context for w in cook(context_mix={"atomic": 1.0})} == {"atomic"}
    assert {w.context for w in cook(context_mix={"global": 1.0, "atomic": 0.0})} == {"global"}
    mix = {"atomic": 1.0, "global": 1.0, "staircase": 2.0}
    assert [w.context for w in cook(context_mix=mix)] == [w.context for w in cook(context_mix=mix)]
    draws = Counter(w.context for e in range(300) for w in cook(epoch=e, context_mix=mix))
    assert set(draws) == {"atomic", "global", "staircase"}
    assert 0.42 < draws["staircase"] / 1200 < 0.58  # weight 2 of 4 (a binomial 1200, 0.5: sd 0.014)

    class Fixed:
        def __init__(self, u):
            self.u = u

        def random(self):
            return self.u
    assert [draw_context(mix, Fixed(u)) for u in (0.0, 0.24, 0.26, 0.49, 0.51, 0.99)] == [
        "atomic", "atomic", "global", "global", "staircase", "staircase"]


def test_collate_puts_history_first_and_fills_the_unified_fields():
    windows = cook()
    batch = collate(windows[2:], frame_stride=K)  # anchors 8 and 12: lengths 4 and 2
    assert batch.history == 2
    assert batch.frames.shape == (2, 4 + 4, 1, 2, 2, 3)
    np.testing.assert_array_equal(batch.frames[0, :, 0, 0, 0, 0].numpy(), np.arange(4, 12) + 1)
    np.testing.assert_array_equal(batch.frames[1, :, 0, 0, 0, 0].numpy(), [9, 10, 11, 12, 13, 14, 0, 0])
    assert batch.actions.shape == (2, 4, 2) and batch.lengths.tolist() == [4, 2]
    assert batch.remaining.tolist() == [6.0, 2.0]
    assert batch.task == ["stack", "stack"] and batch.done == [["reach", "grasp"]] * 2
    assert batch.context == ["atomic", "atomic"]
    # latent frame j of the window is frames[:, j*K]; the anchor is latent frame M
    assert batch.frames[0, 2 * K, 0, 0, 0, 0] == 8 + 1


def test_collate_lays_out_history_latents_before_the_windows():
    windows = cook(episode(latent_stride=K), extras=Extras(latent_stride=K))
    batch = collate(windows[2:], frame_stride=K)
    assert batch.latents.shape == (2, 1, 2, 2 + 2, 1, 1)  # [B, V, Z, M + T/K, h, w]
    np.testing.assert_array_equal(batch.latents[0, 0, 0, :, 0, 0].numpy(), [3, 4, 5, 6])
    np.testing.assert_array_equal(batch.latents[1, 0, 0, :, 0, 0].numpy(), [5, 6, 7, 0])


def test_chunk_and_event_batches_keep_their_layout():
    sample = episode()
    chunks = cook_chunks(sample, cfg(mode="chunk"), 64, Normalizer(), 0)
    batch = collate(chunks[:2], frame_stride=K)
    assert batch.history == 0 and batch.context == [] and batch.task == [] and batch.done == []
    assert batch.frames.shape == (2, 4, 1, 2, 2, 3)


def test_make_cooker_dispatches_and_checks_the_horizon():
    cooker = make_cooker(cfg(), 64, Normalizer(), Extras(), frame_stride=K)
    assert len(cooker(episode(), epoch=0)) == 4
    read = make_cooker(cfg(mode="".join(["uni", "fied"])), 64, Normalizer(), Extras(), frame_stride=K)
    assert read.func is cooker.func  # the mode as a config file gives it: an equal string, not the literal
    with pytest.raises(ConfigError, match="chunk_horizon \\(5\\) to be a multiple of model.frame_stride \\(2\\)"):
        make_cooker(cfg(chunk_horizon=5), 64, Normalizer(), Extras(), frame_stride=K)


@pytest.mark.parametrize("events,message", [
    (None, "has no 'events' list; data.mode=unified reads episode shards"),
    ([{"caption": "a", "start": 0, "end": 5}, {"caption": "b", "start": 6, "end": 14}],
     r"events\[1\] spans \[6, 14\); the events must tile the episode in order \(expected a start of 5\)"),
    ([{"caption": "a", "start": 0, "end": 5}], "the events end at step 5, the sample has 14 steps"),
    ([{"caption": 3, "start": 0, "end": 14}], r"events\[0\] needs a text 'caption'"),
])
def test_bad_event_lists_are_named(events, message):
    sample = episode()
    if events is None:
        del sample["json"]["events"]
    else:
        sample["json"]["events"] = events
    with pytest.raises(SampleError, match=f"shard-000.tar: sample ep000003_L1: key 'json'.*{message}"):
        cook(sample)
