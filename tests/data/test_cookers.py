"""Cookers: the shard contract's checks, normalisation, event crops and chunk windows, each
against values written out here."""

import random
import zlib

import re

import numpy as np
import pytest

from wallwm_pretrain.captions import encode_caption
from wallwm_pretrain.config import CaptionDropConfig, DataConfig
from wallwm_pretrain.data.cookers import (
    Normalizer,
    SampleError,
    check_sample,
    cook_chunks,
    cook_event,
    latent_window,
    sample_rng,
)
from wallwm_pretrain.data.extras import Extras
from wallwm_pretrain.data.modes import make_cooker

NEVER = CaptionDropConfig(rho_min=0.0, rho_max=0.0, l_min=1, l_max=2)
ALWAYS = CaptionDropConfig(rho_min=1.0, rho_max=1.0, l_min=1, l_max=2)


def crude(t=10, key="ep0/e1", caption="pick the cup", task="tidy", latent_stride=0):
    steps = np.arange(t, dtype=np.float32)
    sample = {
        "__key__": key,
        "__url__": "shard-000.tar",
        "json": {"caption": caption, "task": task},
        "actions.npy": np.stack([steps, 10 * steps], axis=1),
        "state.npy": np.array([7.0, 8.0, 9.0], np.float32),
        "states.npy": np.stack([100 + steps, 200 + steps, 300 + steps], axis=1),
        "frames.npy": (steps[:, None, None, None, None] * np.ones((1, 1, 2, 2, 3))).astype(np.uint8),
    }
    if latent_stride:
        n = -(-t // latent_stride)
        sample["latents.npy"] = np.arange(n, dtype=np.float16)[:, None, None, None, None] * np.ones(
            (1, 1, 2, 1, 1), np.float16)
    return sample


def cfg(**kw):
    base = dict(max_frames=4, caption_drop=NEVER, chunk_horizon=4, seed=5)
    return DataConfig(**{**base, **kw})


# ---- the shard contract -------------------------------------------------------------------

@pytest.mark.parametrize("key", ["json", "actions.npy", "state.npy", "states.npy", "frames.npy"])
def test_a_missing_key_is_named_with_the_sample_and_shard(key):
    sample = crude()
    del sample[key]
    others = sorted(k for k in ("json", "actions.npy", "state.npy", "states.npy", "frames.npy") if k != key)
    with pytest.raises(SampleError, match=rf"shard-000.tar: sample ep0/e1: missing key '{key}' \(has {re.escape(str(others))}\)"):
        check_sample(sample)


@pytest.mark.parametrize("key,bad", [
    ("actions.npy", np.zeros((10, 2), np.float64)),
    ("actions.npy", np.zeros(10, np.float32)),
    ("state.npy", np.zeros((1, 3), np.float32)),
    ("states.npy", np.zeros((10, 3), np.float16)),
    ("frames.npy", np.zeros((10, 1, 2, 2), np.uint8)),
    ("frames.npy", [0, 1]),
])
def test_a_wrong_dtype_or_rank_is_named(key, bad):
    sample = crude()
    sample[key] = bad
    with pytest.raises(SampleError, match=rf"key '{key}' must be \w+ with \d dims, got"):
        check_sample(sample)


def test_json_must_be_an_object_with_a_string_caption():
    for meta, message in [
        (["x"], "key 'json' must hold an object, got list"),
        ({"caption": 3}, "'caption' must be a string, got int"),
        ({"caption": "a", "task": None}, "'task' must be a string, got NoneType"),
        ({"task": "a"}, "key 'json' has no 'caption'"),
    ]:
        sample = crude()
        sample["json"] = meta
        with pytest.raises(SampleError, match=message):
            check_sample(sample)


def test_a_balance_error_recorded_on_the_sample_is_raised():
    sample = crude()
    sample["__balance_error__"] = "cluster 'x' is not in index.json"
    with pytest.raises(SampleError, match="cluster 'x' is not in index.json"):
        check_sample(sample)


@pytest.mark.parametrize("key", ["frames.npy", "states.npy"])
def test_lengths_must_agree(key):
    sample = crude(10)
    sample[key] = sample[key][:9]
    with pytest.raises(SampleError, match="lengths differ: actions 10"):
        check_sample(sample)


def test_an_empty_event_is_refused():
    with pytest.raises(SampleError, match="empty event"):
        check_sample(crude(0))


@pytest.mark.parametrize("key", ["actions.npy", "state.npy", "states.npy"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_numbers_are_refused(key, value):
    sample = crude()
    sample[key] = sample[key].copy()
    sample[key].flat[1] = value
    with pytest.raises(SampleError, match=f"key '{key}' contains NaN or inf"):
        check_sample(sample)


def test_a_well_formed_sample_passes():
    check_sample(crude())


# ---- normalisation ------------------------------------------------------------------------

def test_normalizer_standardises_with_a_floor_on_the_std_and_inverts():
    index = {"stats": {"action": {"mean": [1.0, -2.0], "std": [2.0, 0.0]},
                       "state": {"mean": [0.5], "std": [0.25]}}}
    norm = Normalizer.from_index(index)
    x = np.array([[3.0, -2.0], [1.0, -1.0]], np.float32)
    np.testing.assert_allclose(norm.actions(x), [[1.0, 0.0], [0.0, 1e6]], rtol=1e-6)
    np.testing.assert_allclose(norm.state(np.array([1.0], np.float32)), [2.0])
    np.testing.assert_allclose(norm.raw_actions(norm.actions(x)), x, rtol=1e-6)


def test_without_statistics_everything_passes_through():
    norm = Normalizer.from_index({})
    x = np.array([[3.0, -2.0]], np.float32)
    assert norm.actions(x) is x and norm.state(x) is x and norm.raw_actions(x) is x
    only_actions = Normalizer.from_index({"stats": {"action": {"mean": [0.0, 0.0], "std": [1.0, 1.0]}}})
    assert only_actions.state(x) is x and only_actions.state_mean is None


# ---- event mode ---------------------------------------------------------------------------

def test_sample_rng_is_seeded_by_the_written_formula():
    expected = random.Random((5 * 1_000_003 + 2) * 4_294_967_296 + zlib.crc32(b"ep0/e1")).random()
    assert sample_rng(5, 2, "ep0/e1").random() == expected


def test_a_short_event_is_kept_whole():
    [s] = cook_event(crude(4), cfg(max_frames=4), 64, Normalizer(), 0)
    assert s.length == 4 and s.remaining == 4 and s.key == "ep0/e1"
    np.testing.assert_array_equal(s.actions[:, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(s.state, [100, 200, 300])
    np.testing.assert_array_equal(s.caption, encode_caption("pick the cup", 64))
    assert s.meta["task"] == "tidy" and s.latents is None and s.caption_states is None


def test_a_long_event_is_cropped_at_the_seeded_start():
    c = cfg(max_frames=4)
    for epoch in range(6):
        [s] = cook_event(crude(10), c, 64, Normalizer(), epoch)
        start = sample_rng(c.seed, epoch, "ep0/e1").randrange(10 - 4 + 1)
        assert s.length == 4
        np.testing.assert_array_equal(s.actions[:, 0], np.arange(start, start + 4))
        np.testing.assert_array_equal(s.frames[:, 0, 0, 0, 0], np.arange(start, start + 4))
        np.testing.assert_array_equal(s.state, [100 + start, 200 + start, 300 + start])
        assert s.remaining == 10 - start


def test_crops_reach_every_start_and_only_those():
    starts = {int(cook_event(crude(7, key=f"k{i}"), cfg(max_frames=4), 64, Normalizer(), 0)[0].actions[0, 0])
              for i in range(200)}
    assert starts == {0, 1, 2, 3}


def test_with_latents_a_crop_starts_on_a_latent_frame_and_carries_its_latents():
    extras = Extras(latent_stride=2)
    starts = set()
    for i in range(60):
        [s] = cook_event(crude(11, key=f"k{i}", latent_stride=2), cfg(max_frames=4), 64, Normalizer(), 0, extras)
        start = int(s.actions[0, 0])
        starts.add(start)
        np.testing.assert_array_equal(s.latents[:, 0, 0, 0, 0], [start // 2, start // 2 + 1])
    assert starts == {0, 2, 4, 6}


def test_a_dropped_caption_is_the_begin_token_alone():
    [s] = cook_event(crude(), cfg(caption_drop=ALWAYS), 64, Normalizer(), 0)
    np.testing.assert_array_equal(s.caption, encode_caption("", 64))
    [kept] = cook_event(crude(), cfg(caption_drop=NEVER), 64, Normalizer(), 0)
    np.testing.assert_array_equal(kept.caption, encode_caption("pick the cup", 64))


def test_caption_states_swap_to_the_empty_strings_when_dropped():
    empty = np.full((2, 4), 3, np.float16)
    sample = crude()
    sample["caption_states.npy"] = np.ones((5, 4), np.float16)
    [dropped] = cook_event(sample, cfg(caption_drop=ALWAYS), 64, Normalizer(), 0, Extras(empty_states=empty))
    [kept] = cook_event(sample, cfg(caption_drop=NEVER), 64, Normalizer(), 0, Extras(empty_states=empty))
    assert dropped.caption_states is empty
    np.testing.assert_array_equal(kept.caption_states, sample["caption_states.npy"])


def test_caption_states_of_another_width_are_named():
    sample = crude()
    sample["caption_states.npy"] = np.ones((5, 3), np.float16)
    with pytest.raises(SampleError, match="'caption_states.npy' has width 3, the empty states 4"):
        cook_event(sample, cfg(), 64, Normalizer(), 0, Extras(empty_states=np.zeros((1, 4), np.float16)))


def test_normalisation_is_applied_to_actions_and_the_state_token():
    norm = Normalizer(np.array([1.0, 0.0], np.float32), np.array([2.0, 10.0], np.float32),
                      np.array([100.0, 200.0, 300.0], np.float32), np.array([1.0, 1.0, 2.0], np.float32))
    [s] = cook_event(crude(3), cfg(), 64, norm, 0)
    np.testing.assert_allclose(s.actions, [[-0.5, 0.0], [0.0, 1.0], [0.5, 2.0]])
    np.testing.assert_allclose(s.state, [0.0, 0.0, 0.0])


# ---- chunk mode ---------------------------------------------------------------------------

def test_chunks_tile_the_event_and_carry_the_task():
    windows = cook_chunks(crude(10), cfg(chunk_horizon=4), 64, Normalizer(), 0)
    assert [w.key for w in windows] == ["ep0/e1/w0", "ep0/e1/w4", "ep0/e1/w8"]
    assert [w.length for w in windows] == [4, 4, 2]
    assert [w.remaining for w in windows] == [10, 6, 2]
    for w, start in zip(windows, (0, 4, 8)):
        np.testing.assert_array_equal(w.actions[0], [start, 10 * start])
        np.testing.assert_array_equal(w.state, [100 + start, 200 + start, 300 + start])
        np.testing.assert_array_equal(w.caption, encode_caption("tidy", 64))


def test_a_chunk_without_a_task_gets_the_empty_instruction():
    sample = crude(4)
    del sample["json"]["task"]
    [w] = cook_chunks(sample, cfg(chunk_horizon=4), 64, Normalizer(), 0)
    np.testing.assert_array_equal(w.caption, encode_caption("", 64))


def test_chunk_windows_carry_their_latents():
    windows = cook_chunks(crude(10, latent_stride=2), cfg(chunk_horizon=4), 64, Normalizer(), 0,
                          Extras(latent_stride=2))
    assert [w.latents[:, 0, 0, 0, 0].tolist() for w in windows] == [[0, 1], [2, 3], [4]]


def test_latent_frames_must_match_the_steps():
    sample = crude(10, latent_stride=2)
    sample["latents.npy"] = sample["latents.npy"][:4]
    with pytest.raises(SampleError, match=r"has 4 latent frames, 10 steps need ceil\(10 / 2\) = 5$"):
        latent_window(sample, 0, 4, 2)
    for bad in (np.zeros((5, 1, 2, 1, 1), np.int8), np.zeros((5, 1, 2, 1), np.float16),
                np.zeros((5, 1, 2, 1, 1, 1), np.float16)):  # another dtype, one dim short, one too many
        sample["latents.npy"] = bad
        with pytest.raises(SampleError, match="'latents.npy' must be float16 with 5 dims"):
            latent_window(sample, 0, 4, 2)
    sample["latents.npy"] = np.zeros((5, 1, 2, 1, 1), np.float32)
    with pytest.raises(SampleError, match="'latents.npy' must be float16 with 5 dims"):
        latent_window(sample, 0, 4, 2)


def test_make_cooker_follows_the_mode():
    assert len(make_cooker(cfg(mode="event"), 64, Normalizer())(crude(10), epoch=0)) == 1
    assert len(make_cooker(cfg(mode="chunk"), 64, Normalizer())(crude(10), epoch=0)) == 3


@pytest.mark.parametrize("key", ["frames.npy", "states.npy"])
def test_a_member_longer_than_the_actions_is_refused_too(key):
    sample = crude(10)
    longer = crude(11)[key]
    sample[key] = longer
    with pytest.raises(SampleError, match=r"lengths differ: actions 10, frames 1[01], states 1[01]"):
        check_sample(sample)


def test_the_length_error_names_each_members_length():
    sample = crude(10)
    sample["frames.npy"] = sample["frames.npy"][:7]
    with pytest.raises(SampleError, match=r"actions 10, frames 7, states 10"):
        check_sample(sample)


def test_a_missing_or_mistyped_latent_member_says_which():
    sample = crude(10, latent_stride=2)
    del sample["latents.npy"]
    with pytest.raises(SampleError, match="'latents.npy' must be float16 with 5 dims .*got missing"):
        latent_window(sample, 0, 4, 2)
    sample["latents.npy"] = np.zeros((5, 1, 2, 1, 1), np.float32)
    with pytest.raises(SampleError, match=r"got float32 \(5, 1, 2, 1, 1\)"):
        latent_window(sample, 0, 4, 2)


def test_caption_states_wider_than_the_empty_states_are_named_too():
    sample = crude()
    sample["caption_states.npy"] = np.ones((5, 6), np.float16)
    with pytest.raises(SampleError, match="has width 6, the empty states 4"):
        cook_event(sample, cfg(), 64, Normalizer(), 0, Extras(empty_states=np.zeros((1, 4), np.float16)))


def test_latent_crops_reach_every_latent_frame_start():
    extras = Extras(latent_stride=2)
    starts = {int(cook_event(crude(13, key=f"k{i}", latent_stride=2), cfg(max_frames=4), 64, Normalizer(), 0,
                             extras)[0].actions[0, 0]) for i in range(200)}
    assert starts == {0, 2, 4, 6, 8}  # (13 - 4) // 2 + 1 = 5 latent-frame starts


@pytest.mark.parametrize("t", [3, 4])
def test_an_event_that_fits_is_not_cropped_and_draws_nothing_for_a_crop(t):
    # with latents too: start 0, and the caption drop is the sample's first draw
    half = CaptionDropConfig(rho_min=0.5, rho_max=0.5, l_min=1, l_max=2)
    for i in range(40):
        sample = crude(t, key=f"k{i}", latent_stride=2)
        [s] = cook_event(sample, cfg(max_frames=4, caption_drop=half), 64, Normalizer(), 0, Extras(latent_stride=2))
        assert s.length == t and s.actions[0, 0] == 0 and s.remaining == t
        np.testing.assert_array_equal(s.latents[:, 0, 0, 0, 0], np.arange(-(-t // 2)))
        dropped = sample_rng(5, 0, f"k{i}").random() < 0.5
        assert (len(s.caption) == 1) == dropped


def test_caption_states_as_wide_as_a_real_text_encoder_pass():
    """UMT5-XXL's states are 4096 wide: beyond the ints CPython keeps one object of, so the
    width check must compare values."""
    width = 4096
    sample = crude()
    sample["caption_states.npy"] = np.ones((2, width), np.float16)
    empty = np.zeros((1, width), np.float16)
    [s] = cook_event(sample, cfg(caption_drop=NEVER), 64, Normalizer(), 0, Extras(empty_states=empty))
    assert s.caption_states.shape == (2, width)


def test_the_cooker_signatures_resolve_for_typing_tools():
    """The module postpones its annotations; a broken one would only fail what reads the hints."""
    import inspect
    import typing

    from wallwm_pretrain.data import cookers

    functions = [f for _, f in inspect.getmembers(cookers, inspect.isfunction) if f.__module__ == cookers.__name__]
    functions += [cookers.TrainSample, cookers.Normalizer.from_index, cookers.Normalizer.actions]
    hints = {f.__name__: typing.get_type_hints(f) for f in functions}
    assert hints["text_states"]["return"] == np.ndarray | None
    # the mode dispatch lives in the registry now (data/modes), with the same postponed hints
    assert typing.get_type_hints(make_cooker)["window_clusters"] == dict | None


def test_a_constant_dimension_is_divided_by_the_floor_not_by_zero():
    """A state or action dimension that never moves has std 0: it is divided by 1e-6."""
    norm = Normalizer(np.array([0.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32),
                      np.array([100.0, 0.5, 0.0], np.float32), np.array([0.0, 1.0, 8.0], np.float32))
    [s] = cook_event(crude(3), cfg(), 64, norm, 0)
    np.testing.assert_array_equal(s.state, [0.0, 199.5, 37.5])  # the first step's state; (100 - 100) / 1e-6 = 0
    np.testing.assert_allclose(s.actions[:, 0], [0.0, 1e6, 2e6], rtol=1e-6)
    np.testing.assert_allclose(norm.raw_actions(s.actions)[:, 0], [0.0, 1.0, 2.0], rtol=1e-6)


def test_latents_longer_than_the_steps_are_refused():
    sample = crude(10, latent_stride=2)
    sample["latents.npy"] = np.concatenate([sample["latents.npy"], sample["latents.npy"][:1]])
    with pytest.raises(SampleError, match=r"has 6 latent frames, 10 steps need ceil\(10 / 2\) = 5"):
        latent_window(sample, 0, 4, 2)


def test_make_cooker_reads_the_mode_as_a_config_file_gives_it():
    """Equal strings, not the literal objects."""
    assert len(make_cooker(cfg(mode="".join(["ev", "ent"])), 64, Normalizer())(crude(10), epoch=0)) == 1
    assert len(make_cooker(cfg(mode="".join(["ch", "unk"])), 64, Normalizer())(crude(10), epoch=0)) == 3


def test_an_event_longer_than_256_steps_cooks():
    """Lengths past the small ints CPython keeps one object of: the length checks compare values."""
    [s] = cook_event(crude(300), cfg(max_frames=400), 64, Normalizer(), 0)
    assert s.length == 300 and s.frames.shape[0] == 300


def test_chunk_windows_keep_the_task_states_whatever_the_caption_drop():
    """Chunk mode conditions on the task, which is never dropped."""
    empty = np.zeros((1, 4), np.float16)
    sample = crude(8)
    sample["task_states.npy"] = np.ones((3, 4), np.float16)
    windows = cook_chunks(sample, cfg(caption_drop=ALWAYS), 64, Normalizer(), 0, Extras(empty_states=empty))
    assert all(w.caption_states is sample["task_states.npy"] for w in windows)


def test_make_cooker_reads_the_conditioner_mode_as_a_config_file_gives_it():
    from wallwm_pretrain.data.conditioner import make_conditioner_cooker

    got = make_cooker(cfg(mode="".join(["cond", "itioner"])), 64, Normalizer())
    want = make_conditioner_cooker(cfg(mode="conditioner"), 64, Normalizer(), Extras())
    assert getattr(got, "func", got) is getattr(want, "func", want)


def test_latents_of_an_event_longer_than_256_latent_frames_pass():
    sample = crude(600, latent_stride=2)  # 300 latent frames: past the small ints
    assert latent_window(sample, 0, 600, 2).shape[0] == 300
