"""The split of coupled layers over pipeline ranks and its configuration errors."""

import pytest

from wallwm_pretrain.config import ConfigError, load_config
from wallwm_pretrain.model.pipeline_slice import PipelineSlice
from wallwm_pretrain.parallel.pipeline_split import pipeline_slices


def test_pp2_splits_consecutive_layers():
    assert pipeline_slices(4, pp=2, vpp=1, pp_rank=0) == [PipelineSlice(0, 2, embed=True, head=False)]
    assert pipeline_slices(4, pp=2, vpp=1, pp_rank=1) == [PipelineSlice(2, 2, embed=False, head=True)]
    assert pipeline_slices(3, pp=1, vpp=1, pp_rank=0) == [PipelineSlice.whole(3)]


def test_interleaved_chunks_follow_megatrons_virtual_stage_order():
    # chunk k of rank r is virtual chunk k * pp + r
    rank0 = pipeline_slices(8, pp=2, vpp=2, pp_rank=0)
    rank1 = pipeline_slices(8, pp=2, vpp=2, pp_rank=1)
    assert [list(s.layers) for s in rank0] == [[0, 1], [4, 5]]
    assert [list(s.layers) for s in rank1] == [[2, 3], [6, 7]]
    assert [s.embed for s in rank0 + rank1] == [True, False, False, False]
    assert [s.head for s in rank0 + rank1] == [False, False, False, True]


def test_uneven_split_names_the_arithmetic():
    with pytest.raises(ValueError, match=r"num_layers=3 does not split into pp \* vpp = 2 \* 2 = 4 chunks"):
        pipeline_slices(3, pp=2, vpp=2, pp_rank=0)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.num_layers=3", "parallel.pp=2"],
         r"model.num_layers=3 does not split into parallel.pp \* parallel.vpp = 2 \* 1 = 2"),
        (["parallel.vpp=2"], "needs parallel.pp > 1"),
        (["data.batch_size=6", "train.microbatches=4"],
         r"data.batch_size=6 does not split into train.microbatches=4 .*6 = 1 \* 4 \+ 2"),
        (["model.num_layers=4", "parallel.pp=2", "parallel.vpp=2", "data.batch_size=6", "train.microbatches=3"],
         "train.microbatches=3 must be a multiple of parallel.pp=2"),
        (["model.recompute=some"], "model.recompute must be none, full or selective"),
    ],
)
def test_layout_errors_fail_before_any_work(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_valid_layout_loads():
    cfg = load_config(None, ["model.num_layers=4", "parallel.pp=2", "parallel.vpp=2", "train.microbatches=4",
                             "model.recompute=selective"])
    assert (cfg.parallel.vpp, cfg.train.microbatches, cfg.model.recompute) == (2, 4, "selective")
