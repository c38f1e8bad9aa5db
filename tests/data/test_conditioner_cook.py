"""Conditioner samples without shards: the contract check names shard, sample and key; the cooker
normalises the state and keeps the caption's own text states; collate pads the states."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wallwm_pretrain.batch import ConditionerBatch
from wallwm_pretrain.config import CaptionDropConfig, DataConfig
from wallwm_pretrain.data.conditioner import (ConditionerSample, check_conditioner_sample,
                                              collate_conditioner, cook_conditioner)
from wallwm_pretrain.data.cookers import Normalizer, SampleError
from wallwm_pretrain.data.extras import Extras


def _sample(**meta) -> dict:
    base = {"caption": "grip the red cube", "task": "stack", "done_captions": ["reach the red cube"],
            "remaining": 3, "vl_cluster": 0, "action_cluster": 0}
    return {"__url__": "s/shard-000000.tar", "__key__": "ep000001_L1_001_t00012",
            "json": {**base, **meta},
            "observation.npy": np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3),
            "state.npy": np.array([1.0, 2.0, 3.0], np.float32)}


WHERE = "s/shard-000000.tar: sample ep000001_L1_001_t00012"


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("observation.npy"), "missing key 'observation.npy'"),
    (lambda s: s.update({"observation.npy": np.zeros((4, 4, 3), np.uint8)}), "'observation.npy' must be uint8 with 4 dims"),
    (lambda s: s.update({"state.npy": np.zeros(3, np.float64)}), "'state.npy' must be float32 with 1 dims"),
    (lambda s: s["state.npy"].__setitem__(1, np.nan), "'state.npy' contains NaN"),
    (lambda s: s["json"].update(remaining=0), "'remaining' must be an int >= 1"),
    (lambda s: s["json"].update(done_captions="a"), "'done_captions' must be a list of strings"),
    (lambda s: s["json"].pop("caption"), "'caption' must be a string"),
    (lambda s: s.update({"json": [1]}), "key 'json' must hold an object"),
])
def test_contract_errors_name_the_sample(change, message):
    sample = _sample()
    change(sample)
    with pytest.raises(SampleError, match=f"{WHERE}: .*{message}"):
        check_conditioner_sample(sample)


def test_cook_normalises_the_state_and_never_drops_the_caption():
    cfg = DataConfig(mode="conditioner", caption_drop=CaptionDropConfig(rho_min=1.0, rho_max=1.0, l_min=1, l_max=2))
    norm = Normalizer(state_mean=np.array([1.0, 1.0, 1.0], np.float32), state_std=np.array([1.0, 2.0, 4.0], np.float32))
    states = np.full((5, 6), 0.5, np.float16)
    sample = {**_sample(), "caption_states.npy": states}
    extras = Extras(empty_states=np.zeros((2, 6), np.float16))
    (cooked,) = cook_conditioner(sample, cfg, 64, norm, epoch=3, extras=extras)
    np.testing.assert_allclose(cooked.state, [0.0, 0.5, 0.5])
    assert cooked.caption == "grip the red cube" and cooked.done == ["reach the red cube"]
    assert cooked.remaining == 3 and cooked.caption_states is states
    (plain,) = cook_conditioner(_sample(), cfg, 64, norm, epoch=0)
    assert plain.caption_states is None  # no text states recorded: none read


def test_collate_pads_text_states_and_counts_one_step_per_row():
    def one(key, n):
        s = _sample()
        return ConditionerSample(key, s["observation.npy"], s["state.npy"], n + 1, "t", [], f"c{n}",
                                 np.ones((n, 4), np.float16))

    batch = collate_conditioner([one("a", 2), one("b", 5)])
    assert isinstance(batch, ConditionerBatch) and batch.size == 2
    assert batch.lengths.tolist() == [1, 1] and batch.remaining.tolist() == [3.0, 6.0]
    assert batch.text_states.shape == (2, 5, 4) and batch.text_valid.sum(1).tolist() == [2, 5]
    assert batch.text_states[0, 2:].abs().sum() == 0 and batch.padding_efficiency() == pytest.approx(7 / 10)
    bare = collate_conditioner([ConditionerSample("a", np.zeros((1, 2, 2, 3), np.uint8), np.zeros(2, np.float32),
                                                  1, "t", ["x"], "c")])
    assert bare.text_states is None and bare.padding_efficiency() == 1.0
    assert bare.observation.dtype == torch.uint8 and bare.done == [["x"]]
