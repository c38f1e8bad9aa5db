"""The typed model interface: both video towers are one :class:`Denoiser`, the conditioner models
are :class:`TrainableModel`s, capabilities are members (no ``hasattr`` probes of the model)."""

import ast
import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _wan_wallwm_tiny import CFG as WAN_CFG  # noqa: E402

from wallwm_pretrain.config import ModelConfig  # noqa: E402
from wallwm_pretrain.model import (  # noqa: E402
    Denoiser, DualTowerDenoiser, TrainableModel, WallWM, WanWallWM, boundary_width, build_model, denoiser_class,
)
from wallwm_pretrain.model.pipeline_slice import PipelineSlice  # noqa: E402
from wallwm_pretrain.model.video_tower import VideoTower  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SMALL_CFG = ModelConfig(hidden_size=32, num_layers=3, num_heads=4, ffn_hidden_size=64, image_size=16, patch_size=8,
                        frame_stride=4, caption_max_bytes=15)
WAN3 = replace(WAN_CFG, num_layers=3)
SLICES = [PipelineSlice(0, 1, True, False), PipelineSlice(1, 1, False, False), PipelineSlice(2, 1, False, True)]


@pytest.mark.parametrize("cfg,cls", [(SMALL_CFG, WallWM), (WAN3, WanWallWM)], ids=["small", "wan"])
def test_both_video_towers_are_one_denoiser(cfg, cls):
    assert denoiser_class(cfg) is cls and issubclass(cls, DualTowerDenoiser) and issubclass(cls, VideoTower)
    torch.manual_seed(0)
    model = build_model(cfg)
    assert isinstance(model, cls) and isinstance(model, Denoiser) and isinstance(model, TrainableModel)
    assert model.context_sources == ()  # no context sources configured: none built
    assert model.loss_keys == ("loss", "loss_video", "loss_action", "loss_time")
    assert list(model.coupled_layers()) == ["0", "1", "2"]
    assert cfg.hidden_size in model.residual_widths()


@pytest.mark.parametrize("cfg", [SMALL_CFG, WAN3], ids=["small", "wan"])
def test_pipeline_stages_answer_from_their_slice(cfg):
    """Counts and coupled layers of the stages add up to the whole model's (the ends a stage holds
    are read from its pipeline slice)."""
    torch.manual_seed(0)
    whole = build_model(cfg).parameter_counts()
    stages = []
    for part in SLICES:
        torch.manual_seed(0)
        stages.append(build_model(cfg, part))
    for key in whole:
        assert sum(s.parameter_counts()[key] for s in stages) == whole[key], key
    assert [list(s.coupled_layers()) for s in stages] == [["0"], ["1"], ["2"]]


def test_boundary_width_is_the_towers_say():
    assert boundary_width(SMALL_CFG) == SMALL_CFG.hidden_size
    assert boundary_width(WAN_CFG) == WAN_CFG.wan.num_attention_heads * WAN_CFG.wan.attention_head_dim


def test_conditioner_models_have_the_trainable_interface():
    """Checked on the classes (building them loads a VLM): the members the pipeline path calls."""
    from wallwm_pretrain.model.conditioner.model import TextConditioner
    from wallwm_pretrain.model.conditioner.staircase_model import StaircaseModel

    members = ("forward", "sample_noise", "loss_counts", "boundary_seq_length", "train_flops", "parameter_counts")
    for cls in (TextConditioner, StaircaseModel):
        assert all(callable(getattr(cls, m, None)) for m in members), cls
        assert isinstance(cls.loss_keys, tuple) and cls.loss_keys[0] == "loss"


def _hasattr_calls(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(), str(path))
    return [n.lineno for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "hasattr"]


def test_no_capability_probes_in_model_parallel_and_trainer():
    """The model answers capability questions by members (``pipeline_slice``, ``context_sources``,
    ``coupled_layers``...); the only ``hasattr`` left probes megatron-core's API."""
    pkg = ROOT / "wallwm_pretrain"
    files = sorted([*(pkg / "model").rglob("*.py"), *(pkg / "parallel").rglob("*.py"), *(pkg / "trainer").rglob("*.py"),
                    *(pkg / "checkpoint").rglob("*.py")])
    assert len([f for f in files if "trainer" in f.parts]) >= 3  # the trainer package is scanned
    found = {str(f.relative_to(ROOT)): _hasattr_calls(f) for f in files}
    found = {f: lines for f, lines in found.items() if lines}
    assert set(found) <= {"wallwm_pretrain/parallel/cpu_patches.py"}, found
