"""Length buckets and collate, against batches written out by hand."""

import numpy as np
import pytest
import torch

from wallwm_pretrain.data.buckets import bucket_batches
from wallwm_pretrain.data.collate import collate
from wallwm_pretrain.data.cookers import TrainSample


def sample(key, length, views=1, caption=(7,), remaining=0, action_dim=2):
    t = np.arange(length, dtype=np.float32)
    return TrainSample(
        key=key,
        frames=np.full((length, views, 2, 2, 3), length, np.uint8),
        actions=np.stack([t + 1, -(t + 1)], axis=1)[:, :action_dim].astype(np.float32),
        state=np.array([length, -length], np.float32),
        caption=np.asarray(caption, np.int64),
        remaining=remaining,
    )


def keys(batch):
    return [s.key for s in batch]


def test_a_bucket_is_emitted_the_moment_it_fills_in_stream_order():
    # boundaries are upper bounds: 1..4 -> bucket 0, 5..8 -> bucket 1, > 8 -> the last bucket
    stream = [sample("a", 3), sample("b", 6), sample("c", 4), sample("d", 9), sample("e", 5), sample("f", 8)]
    batches = list(bucket_batches(stream, 2, [4, 8], keys))
    assert batches == [["a", "c"], ["b", "e"]] + [["f", "d"]]  # leftovers f (8), d (9), sorted by length


def test_a_length_equal_to_a_boundary_belongs_to_that_bucket():
    stream = [sample("four", 4), sample("five", 5), sample("one", 1)]
    assert list(bucket_batches(stream, 2, [4, 8], keys))[0] == ["four", "one"]


def test_leftovers_are_sorted_by_length_cut_into_full_batches_and_only_the_rest_dropped():
    lengths = {"p": 30, "q": 2, "r": 17, "s": 9, "t": 25, "u": 12, "v": 40}
    stream = [sample(k, n) for k, n in lengths.items()]
    # one sample per bucket until the end: every sample is a leftover
    batches = list(bucket_batches(stream, 3, [4, 10, 20, 32], keys))
    assert batches == [["q", "s", "u"], ["r", "t", "p"]]  # "v" (the longest) is the dropped remainder


def test_every_sample_is_used_once_and_fewer_than_a_batch_are_dropped():
    rng = np.random.default_rng(3)
    stream = [sample(f"k{i}", int(n)) for i, n in enumerate(rng.integers(1, 40, size=53))]
    batches = list(bucket_batches(stream, 4, [8, 16], keys))
    used = [k for b in batches for k in b]
    assert len(used) == len(set(used)) == 52 and all(len(b) == 4 for b in batches)


def test_batches_are_copies_not_the_buckets_themselves():
    got = []
    for batch in bucket_batches([sample(str(i), 2) for i in range(4)], 2, [4], lambda b: b):
        got.append(batch)
    assert [keys(b) for b in got] == [["0", "1"], ["2", "3"]]


def test_collate_pads_to_the_longest_rounded_to_whole_latent_frames():
    a = sample("a", 5, caption=(3, 4, 5), remaining=9)
    b = sample("b", 2, caption=(6,), remaining=2)
    batch = collate([a, b], frame_stride=4)
    assert batch.frames.shape == (2, 8, 1, 2, 2, 3) and batch.frames.dtype == torch.uint8
    assert batch.actions.shape == (2, 8, 2) and batch.actions.dtype == torch.float32
    assert torch.equal(batch.lengths, torch.tensor([5, 2]))
    assert batch.keys == ["a", "b"]
    # real steps copied, padding zero
    assert torch.equal(batch.frames[0, :5], torch.full((5, 1, 2, 2, 3), 5, dtype=torch.uint8))
    assert batch.frames[0, 5:].abs().sum() == 0 and batch.frames[1, 2:].abs().sum() == 0
    assert torch.equal(batch.actions[1, :2], torch.tensor([[1.0, -1.0], [2.0, -2.0]]))
    assert batch.actions[1, 2:].abs().sum() == 0
    assert torch.equal(batch.caption, torch.tensor([[3, 4, 5], [6, 0, 0]]))
    assert torch.equal(batch.state, torch.tensor([[5.0, -5.0], [2.0, -2.0]]))
    assert torch.equal(batch.remaining, torch.tensor([9.0, 2.0]))


@pytest.mark.parametrize("longest,stride,padded", [(4, 4, 4), (1, 4, 4), (9, 4, 12), (6, 3, 6), (7, 1, 7)])
def test_collate_length_arithmetic(longest, stride, padded):
    batch = collate([sample("x", longest), sample("y", 1)], frame_stride=stride)
    assert batch.actions.shape[1] == padded


def test_six_leftovers_make_two_batches_of_three():
    stream = [sample(k, n) for k, n in zip("abcdef", (1, 9, 2, 10, 3, 11))]
    # boundaries [4, 8]: a, c, e in bucket 0 fill a batch; b, d, f wait in the last bucket
    assert list(bucket_batches(stream, 3, [4, 8], keys)) == [["a", "c", "e"], ["b", "d", "f"]]
    stream = [sample(k, n) for k, n in zip("abcdef", (1, 9, 5, 10, 6, 2))]
    # one per bucket at a time, never three alike: all six are leftovers, sorted by length
    assert list(bucket_batches(stream, 3, [4, 8], keys)) == [["a", "f", "c"], ["e", "b", "d"]]


def test_without_boundaries_every_sample_shares_one_bucket():
    stream = [sample(k, n) for k, n in zip("abcde", (30, 2, 17, 5, 9))]
    assert list(bucket_batches(stream, 2, [], keys)) == [["a", "b"], ["c", "d"]]


def test_collate_lays_latents_out_per_view_and_marks_real_caption_states():
    a, b = sample("a", 7), sample("b", 3)
    a.latents = np.arange(2 * 2 * 3, dtype=np.float16).reshape(2, 2, 3, 1, 1) + 1  # [N=2, V=2, Z=3, h, w]
    b.latents = np.full((1, 2, 3, 1, 1), -1, np.float16)
    a.caption_states = np.ones((4, 5), np.float16)
    b.caption_states = np.full((2, 5), 2, np.float16)
    batch = collate([a, b], frame_stride=4)
    assert batch.latents.shape == (2, 2, 3, 2, 1, 1) and batch.latents.dtype == torch.float16  # [B, V, Z, N, h, w]
    assert torch.equal(batch.latents[0, 1, 2, :, 0, 0], torch.tensor([6.0, 12.0], dtype=torch.float16))
    assert torch.equal(batch.latents[1, :, :, 0], torch.full((2, 3, 1, 1), -1.0, dtype=torch.float16))
    assert batch.latents[1, :, :, 1].abs().sum() == 0  # sample b has one latent frame
    assert batch.text_states.shape == (2, 4, 5)
    assert torch.equal(batch.text_valid, torch.tensor([[True] * 4, [True, True, False, False]]))
    assert torch.equal(batch.text_states[1, :2], torch.full((2, 5), 2.0, dtype=torch.float16))
    assert batch.text_states[1, 2:].abs().sum() == 0


def test_collate_leaves_latents_and_states_out_unless_every_sample_has_them():
    a, b = sample("a", 4), sample("b", 4)
    a.latents = np.zeros((1, 1, 2, 1, 1), np.float16)
    a.caption_states = np.zeros((1, 3), np.float16)
    batch = collate([a, b], frame_stride=4)
    assert batch.latents is None and batch.text_states is None and batch.text_valid is None
