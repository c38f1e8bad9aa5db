"""Balance keep probabilities and the caption-drop ramp against formulas written out here.

Nothing below calls ``balance.target()`` or ``drop_probability`` to get an expected value:
the expectations are hand-worked numbers or the formulas of DESIGN.md typed out again.
"""

import math

import numpy as np
import pytest

from wallwm_pretrain.config import BalanceConfig, CaptionDropConfig, DataConfig
from wallwm_pretrain.data.balance import ClusterBalance
from wallwm_pretrain.captions import encode_caption
from wallwm_pretrain.data.captions import drop_probability
from wallwm_pretrain.data.cookers import Normalizer, cook_event


def build_data_config(**overrides):
    """The one place this file builds a DataConfig (key moves are a one-line fix here)."""
    return DataConfig(**overrides)


# -- cluster balance ----------------------------------------------------------------------

VL = {0: 400, 1: 100, 2: 25}
ACTION = {0: 360, 1: 40, 2: 90}
INDEX = {"vl_cluster_counts": {str(k): v for k, v in VL.items()},
         "action_cluster_counts": {str(k): v for k, v in ACTION.items()}}


def keep_formula(v, a, alpha_vl, alpha_action):
    """keep(v, a) = (n_v / min n_v)^(alpha_vl - 1) * (n_a / min n_a)^(alpha_action - 1): the
    smallest cluster of each axis is kept always, a cluster m times larger with m^(alpha - 1)."""
    return (VL[v] / min(VL.values())) ** (alpha_vl - 1) * (ACTION[a] / min(ACTION.values())) ** (alpha_action - 1)


def test_keep_probabilities_hand_worked():
    """alpha_vl = 0.5, alpha_action = 0: VL factors 1/4, 1/2, 1; action factors 1/9, 1, 4/9."""
    balance = ClusterBalance(INDEX, BalanceConfig(0.5, 0.0), seed=0)
    expected = {
        (0, 0): 1 / 4 * 1 / 9, (0, 1): 1 / 4, (0, 2): 1 / 4 * 4 / 9,
        (1, 0): 1 / 2 * 1 / 9, (1, 1): 1 / 2, (1, 2): 1 / 2 * 4 / 9,
        (2, 0): 1 / 9, (2, 1): 1.0, (2, 2): 4 / 9,
    }
    for (v, a), p in expected.items():
        assert balance.keep_probability(v, a) == pytest.approx(p, rel=1e-12), (v, a)


@pytest.mark.parametrize("alpha_vl", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("alpha_action", [0.0, 0.25, 0.7, 1.0])
def test_keep_probabilities_on_both_axes(alpha_vl, alpha_action):
    balance = ClusterBalance(INDEX, BalanceConfig(alpha_vl, alpha_action), seed=0)
    for v in VL:
        for a in ACTION:
            assert balance.keep_probability(v, a) == pytest.approx(keep_formula(v, a, alpha_vl, alpha_action), rel=1e-12)


@pytest.mark.parametrize("alpha_vl, alpha_action", [(0.5, 0.0), (1.0, 0.3), (0.0, 0.7)])
def test_kept_share_per_cluster_pair_follows_the_formula(alpha_vl, alpha_action):
    """The keep decisions themselves: per (v, a), the kept fraction over many keys is the formula
    value (binomial, 5 standard deviations)."""
    balance = ClusterBalance(INDEX, BalanceConfig(alpha_vl, alpha_action), seed=3)
    n = 4000
    for v in VL:
        for a in ACTION:
            p = keep_formula(v, a, alpha_vl, alpha_action)
            kept = sum(balance.keep({"vl_cluster": v, "action_cluster": a}, f"k{v}_{a}_{i}", 0) for i in range(n))
            sigma = math.sqrt(p * (1 - p) / n)
            assert abs(kept / n - p) <= 5 * sigma + 1e-12, (v, a, kept / n, p)


# -- the caption-drop ramp ----------------------------------------------------------------

RAMP = CaptionDropConfig(rho_min=0.1, rho_max=0.9, l_min=100, l_max=200)


@pytest.mark.parametrize(
    "length, expected",
    [
        # rho = 0.1 + 0.8 * (1 - cos(pi u)) / 2; a linear ramp would give 0.3 and 0.7
        (125, 0.1 + 0.8 * (1 - math.sqrt(0.5)) / 2),  # u = 0.25: 0.21715729
        (175, 0.1 + 0.8 * (1 + math.sqrt(0.5)) / 2),  # u = 0.75: 0.78284271
        (110, 0.1 + 0.8 * (1 - math.cos(math.pi * 0.1)) / 2),
        (100, 0.1), (99, 0.1), (200, 0.9), (10_000, 0.9),
    ],
)
def test_ramp_is_a_cosine_at_interior_points(length, expected):
    assert drop_probability(length, RAMP) == pytest.approx(expected, abs=1e-12)


def crude(t, seed=0, caption="reach for the red cube"):
    rng = np.random.default_rng(seed)
    states = rng.normal(size=(t, 3)).astype(np.float32)
    return {
        "__key__": f"ep000000_L1_{seed:03d}",
        "json": {"caption": caption, "task": "stack", "vl_cluster": 0, "action_cluster": 0},
        "actions.npy": rng.normal(size=(t, 2)).astype(np.float32),
        "state.npy": states[0],
        "states.npy": states,
        "frames.npy": np.zeros((t, 1, 4, 4, 3), np.uint8),
    }


@pytest.mark.parametrize("full_length, expect_dropped", [(16, True), (4, False)])
def test_drop_is_decided_on_the_event_length_before_cropping(full_length, expect_dropped):
    """rho = 0 up to 5 steps, 1 from 15: a 16-step event cropped to 4 steps is still a long event
    (caption always dropped); a 4-step event (no crop) always keeps it."""
    cfg = build_data_config(max_frames=4, seed=11,
                            caption_drop=CaptionDropConfig(rho_min=0.0, rho_max=1.0, l_min=5, l_max=15))
    full_caption = encode_caption("reach for the red cube", 64)
    for seed in range(20):
        for epoch in range(3):
            [sample] = cook_event(crude(full_length, seed), cfg, 64, Normalizer(), epoch)
            assert sample.length == 4  # cropping did change the length of the long event
            if expect_dropped:
                assert sample.caption.tolist() == full_caption[:1].tolist()
            else:
                assert sample.caption.tolist() == full_caption.tolist()


def test_drop_frequency_of_cooked_events_matches_the_ramp_of_the_full_length():
    """Events of 150 steps cropped to 8: dropped at rho(150) = 0.5 (cosine midpoint of 100..200),
    not at rho(8) = 0.1."""
    cfg = build_data_config(max_frames=8, seed=2, caption_drop=RAMP)
    n = 600
    dropped = 0
    for i in range(n):
        sample = crude(150, seed=i % 7)
        sample["__key__"] = f"ep{i:06d}_L1_000"
        [cooked] = cook_event(sample, cfg, 64, Normalizer(), 0)
        dropped += len(cooked.caption) == 1
    sigma = math.sqrt(0.25 / n)
    assert abs(dropped / n - 0.5) < 5 * sigma


# -- caption tokens ---------------------------------------------------------------------------


def test_caption_tokens_hand_worked():
    from wallwm_pretrain.captions import decode_caption

    # BEGIN = 1, then each UTF-8 byte + 2 (0 is padding): "ab" = bytes 97, 98
    assert encode_caption("ab", 64).tolist() == [1, 99, 100]
    assert encode_caption("ab", 64).dtype == np.int64
    assert encode_caption("abcdef", 3).tolist() == [1, 99, 100, 101]  # at most max_bytes bytes
    assert encode_caption("", 8).tolist() == [1]
    # decoding drops BEGIN and padding and undoes the offset; byte 0xff survives the round trip
    assert decode_caption(np.array([1, 99, 100, 0, 0])) == "ab"
    assert decode_caption(encode_caption("grasp \u00e9\u00ff", 64)) == "grasp \u00e9\u00ff"
    assert decode_caption(np.array([1, 2 + 0xFF], dtype=np.int64)) == "\ufffd"  # a lone 0xff byte


@pytest.mark.parametrize("length", [201, 250, 300])
def test_ramp_is_flat_beyond_l_max(length):
    """Past l_max rho stays rho_max (a cosine continued past u = 1 would give 0.5 at 250)."""
    assert drop_probability(length, RAMP) == pytest.approx(0.9, abs=1e-12)


PAPER_RAMP = CaptionDropConfig(rho_min=0.1, rho_max=0.9, l_min=129, l_max=220)


@pytest.mark.parametrize("length", [130, 140, 152, 175, 197, 219])
def test_paper_ramp_at_interior_points(length):
    """The paper's ramp (0.1, 0.9, 129, 220 frames): the cosine typed out again here. Lengths are
    not on a round grid, so a shifted or wrapped u (u + 2, u mod 1) cannot land on the same cosine."""
    u = (length - 129) / (220 - 129)
    assert drop_probability(length, PAPER_RAMP) == pytest.approx(0.1 + 0.8 * (1 - math.cos(math.pi * u)) / 2, abs=1e-12)


def test_caption_with_a_nul_byte_round_trips():
    from wallwm_pretrain.captions import decode_caption

    tokens = encode_caption("a\x00b", 64)
    assert tokens.tolist() == [1, 99, 2, 100]  # byte 0 is token 2, distinct from padding (0)
    assert decode_caption(tokens) == "a\x00b"


@pytest.mark.parametrize("length", [6, 9, 12, 14])
def test_wide_ramp_at_interior_points(length):
    """l_max more than twice l_min (5 .. 15 steps): u = (L - 5) / 10 differs from (L mod 5) / 10."""
    ramp = CaptionDropConfig(rho_min=0.0, rho_max=1.0, l_min=5, l_max=15)
    u = (length - 5) / 10
    assert drop_probability(length, ramp) == pytest.approx((1 - math.cos(math.pi * u)) / 2, abs=1e-12)



def test_older_index_counts_are_summed_from_the_shards():
    """An index.json without the *_cluster_counts totals: per-shard counts are added up."""
    shards = [
        {"vl_cluster": {"0": 300, "1": 60}, "action_cluster": {"0": 200, "1": 40, "2": 120}},
        {"vl_cluster": {"0": 100, "1": 40, "2": 25}, "action_cluster": {"0": 160, "2": 5}},
    ]
    older = ClusterBalance({"shards": shards}, BalanceConfig(0.5, 0.0), seed=0)
    # VL totals 400, 100, 25 and action totals 360, 40, 125 -> the hand-worked factors of VL above
    assert older.keep_probability(0, 1) == pytest.approx(1 / 4, rel=1e-12)
    assert older.keep_probability(1, 2) == pytest.approx(1 / 2 * 40 / 125, rel=1e-12)
    assert older.keep_probability(2, 0) == pytest.approx(40 / 360, rel=1e-12)


def test_empty_clusters_are_left_out():
    """A cluster with no samples has no keep probability (and does not set the normalisation)."""
    index = {"vl_cluster_counts": {"0": 400, "1": 100, "2": 0}, "action_cluster_counts": {"0": 10}}
    balance = ClusterBalance(index, BalanceConfig(0.5, 1.0), seed=0)
    assert balance.keep_probability(1, 0) == 1.0 and balance.keep_probability(0, 0) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="cluster 2"):
        balance.keep_probability(2, 0)



def test_a_one_sample_cluster_is_balanced_too():
    """The long tail can be a single sample: its cluster is the smallest one, always kept."""
    index = {"vl_cluster_counts": {"0": 100, "1": 1}, "action_cluster_counts": {"0": 101}}
    balance = ClusterBalance(index, BalanceConfig(0.0, 1.0), seed=0)
    assert balance.keep_probability(1, 0) == 1.0 and balance.keep_probability(0, 0) == pytest.approx(0.01)


def test_the_caption_vocabulary_is_258_ids_with_pad_zero():
    """The ids are a checkpoint contract (the model's caption embedding has one row per id and
    masks id 0 as padding): pad 0, begin 1, byte b at 2 + b, the last byte at 257."""
    from wallwm_pretrain.captions import CAPTION_BEGIN, CAPTION_PAD, CAPTION_VOCAB, encode_caption

    assert (CAPTION_PAD, CAPTION_BEGIN, CAPTION_VOCAB) == (0, 1, 258)
    assert encode_caption("\xff", 10).tolist() == [1, 2 + 0xC3, 2 + 0xBF]  # U+00FF is c3 bf in UTF-8
    assert max(encode_caption(chr(0x10FFFF), 10)) < CAPTION_VOCAB  # f4 8f bf bf: every id fits
