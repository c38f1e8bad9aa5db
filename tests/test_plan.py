"""The memory plan (``python -m wallwm_pretrain.plan``) against what the code really does."""

import dataclasses

import pytest
import torch

from wallwm_pretrain.config import ModelConfig, OptimConfig
from wallwm_pretrain.model.flops import SampleShape, forward_flops
from wallwm_pretrain.model.pipeline_slice import PipelineSlice
from wallwm_pretrain.model.wallwm import WallWM
from wallwm_pretrain.optim import build_optimizer
from wallwm_pretrain.plan.__main__ import main
from wallwm_pretrain.plan.measure import meta_batch, meta_model, measure_forward
from wallwm_pretrain.plan.memory import Layout, pipeline_rank_state_bytes, tp_split_names

DIMS = ["model.num_views=2", "model.action_dim=4", "model.state_dim=8", "model.image_size=32"]


def _cfg(**kw):
    base = dict(image_size=32, num_views=2, action_dim=4, state_dim=8, hidden_size=32, num_layers=2, num_heads=2,
                ffn_hidden_size=64, patch_size=8, caption_max_bytes=16)
    return ModelConfig(**{**base, **kw})


def test_meta_flops_match_the_analytic_count():
    cfg = _cfg(hidden_size=64, ffn_hidden_size=128)
    measured = measure_forward(meta_model(cfg), meta_batch(cfg, 2, 16))
    analytic = forward_flops(cfg, SampleShape.of(cfg, 16, cfg.frame_stride, cfg.caption_max_bytes + 1))["total"]
    # the analytic count leaves out the remaining-time head; everything else is the same matmuls
    assert measured.flops / 2 == pytest.approx(analytic, rel=0.02)
    assert measured.flops / 2 != pytest.approx(analytic, rel=1e-6)  # the head is there


def test_the_meta_measurement_is_the_cpu_models():
    cfg = _cfg()
    torch.manual_seed(0)
    cpu = WallWM(cfg)
    batch = meta_batch(cfg, 2, 16)
    real = dataclasses.replace(
        batch,
        frames=torch.randint(0, 255, batch.frames.shape, dtype=torch.uint8),
        actions=torch.randn(batch.actions.shape),
        state=torch.randn(batch.state.shape),
        lengths=torch.full(batch.lengths.shape, 16),
        caption=torch.ones(batch.caption.shape, dtype=torch.long),
        remaining=torch.ones(batch.remaining.shape),
    )
    on_cpu = measure_forward(cpu, real)
    on_meta = measure_forward(meta_model(cfg), batch)
    assert on_meta.flops == on_cpu.flops
    assert on_meta.saved == on_cpu.saved and on_meta.tp_split == on_cpu.tp_split
    assert set(on_meta.saved) == {"embed", "layer 0", "layer 1", "head"}
    assert 0 < on_meta.tp_split["layer 0"] < on_meta.saved["layer 0"]


def test_pipeline_stages_hold_the_whole_model_between_them():
    cfg = _cfg(num_layers=4)
    whole = sum(p.numel() for p in meta_model(cfg).parameters())
    stages = [PipelineSlice(0, 2, embed=True, head=False), PipelineSlice(2, 2, embed=False, head=True)]
    layout = Layout(tp=1, pp=2, dp=1)
    held = sum(pipeline_rank_state_bytes(meta_model(cfg, s), layout, "replicated", False).params for s in stages)
    assert held == whole


def test_tensor_parallelism_splits_only_the_parallel_linears():
    cfg = _cfg()
    model = meta_model(cfg)
    split = tp_split_names(model)
    assert "layers.0.video.self_attn.linear_qkv.weight" in split
    assert not any("adaln" in n or "norm" in n for n in split)
    one, two = (pipeline_rank_state_bytes(model, Layout(tp, 1, 1), "gather", True) for tp in (1, 2))
    split_elems = sum(p.numel() for n, p in model.named_parameters() if n in split)
    assert one.params - two.params == split_elems // 2


def test_replicated_optimizer_bytes_are_what_the_optimizer_allocates():
    cfg = _cfg()
    torch.manual_seed(0)
    model = WallWM(cfg)
    optim_cfg = OptimConfig(muon_mode="replicated", muon_split_fused=False)
    opt = build_optimizer(model, optim_cfg, total_steps=4, device_type="cpu")
    loss = model(meta_batch_cpu(cfg))["loss"]
    loss.backward()
    opt.step()
    allocated = {"muon": 0, "adamw": 0}
    for name, o in opt.optimizers.items():
        for state in o.state.values():
            allocated[name] += sum(t.numel() * t.element_size() for t in state.values()
                                   if torch.is_tensor(t) and t.dim() > 0)
    planned = pipeline_rank_state_bytes(meta_model(cfg), Layout(1, 1, 1), "replicated", False)
    assert (planned.muon, planned.adamw) == (allocated["muon"], allocated["adamw"])


def test_owner_mode_spreads_the_momentum_over_the_homes():
    cfg = _cfg(num_layers=4)
    model = meta_model(cfg)
    alone = pipeline_rank_state_bytes(model, Layout(1, 1, 1), "owner", True)
    four = pipeline_rank_state_bytes(model, Layout(2, 1, 2), "owner", True)
    assert alone.muon / 4 <= four.muon < alone.muon / 2
    assert four.adamw == pytest.approx(alone.adamw / 2, rel=0.01)  # ZeRO-1 over DP=2


def meta_batch_cpu(cfg):
    batch = meta_batch(cfg, 2, 16)
    g = torch.Generator().manual_seed(1)
    return dataclasses.replace(
        batch,
        frames=torch.randint(0, 255, batch.frames.shape, dtype=torch.uint8, generator=g),
        actions=torch.randn(batch.actions.shape, generator=g),
        state=torch.randn(batch.state.shape, generator=g),
        lengths=torch.tensor([16, 9]),
        caption=torch.ones(batch.caption.shape, dtype=torch.long),
        remaining=torch.ones(batch.remaining.shape),
    )


def test_cli_prints_every_pipeline_rank(capsys):
    assert main(["--config", "configs/smoke.yaml", "--gpus", "8", "parallel.tp=2", "parallel.pp=2", *DIMS]) == 0
    out = capsys.readouterr().out
    assert "8 ranks = TP 2 x PP 2 x CP 1 x DP 2" in out
    assert "FLOPs per sample" in out
    rows = [line for line in out.splitlines() if line.strip().startswith(("0 |", "1 |"))]
    assert len(rows) == 2


def test_cli_merges_several_configs_in_order(capsys, tmp_path):
    """--config given twice: a size preset, then a stage-like overlay (as train and the recipes do)."""
    size, stage = tmp_path / "size.yaml", tmp_path / "stage.yaml"
    size.write_text("model:\n  num_layers: 4\n  hidden_size: 64\n")
    stage.write_text("model:\n  num_heads: 2\n")
    assert main(["--config", str(size), "--config", str(stage), "--gpus", "2", *DIMS]) == 0
    assert "model: 4 coupled layers; action tower hidden 64, 2 heads" in capsys.readouterr().out


def test_cli_errors_are_one_line(capsys):
    assert main(["--config", "configs/smoke.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model.action_dim" in err
    assert main(["--config", "configs/smoke.yaml", "--gpus", "3", "parallel.tp=2", *DIMS]) == 2
    assert "not a multiple" in capsys.readouterr().err


def test_recompute_full_keeps_shared_layer_inputs_once():
    cfg = _cfg(num_layers=3)
    measured = measure_forward(meta_model(cfg), meta_batch(cfg, 2, 16))
    one, three = measured.kept(["layer 0"]), measured.kept(["layer 0", "layer 1", "layer 2"])
    # the caption states, state token and timestep embeddings are the same tensors in every
    # layer; only the two towers' hidden states are new per layer
    per_layer_new = 2 * (16 // cfg.frame_stride * 2 * (32 // 8) ** 2 + 16) * cfg.hidden_size * 4
    assert three - one == 2 * per_layer_new


def test_frozen_vlm_adds_its_weights_to_every_rank(capsys, tmp_path):
    """--vlm: the VLM's parameter bytes (counted on the meta device from config.json alone)
    are added whole to every rank's total; a folder of another model fails naming its file."""
    import json

    from transformers import Qwen3_5Config

    folder = tmp_path / "vlm"
    folder.mkdir()
    config = Qwen3_5Config(text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                            vocab_size=200_000),
                           vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2,
                                              out_hidden_size=64)).to_dict()
    config["architectures"] = ["Qwen3_5ForConditionalGeneration"]
    (folder / "config.json").write_text(json.dumps(config))
    args = ["--config", "configs/smoke.yaml", "--gpus", "4", "parallel.pp=2", *DIMS]

    def totals(extra):
        assert main(args + extra) == 0
        out = capsys.readouterr().out
        return out, [float(line.rsplit("|", 1)[1]) for line in out.splitlines() if line.strip().startswith(("0 |", "1 |"))]

    _, plain = totals([])
    out, with_vlm = totals(["--vlm", str(folder), "--vlm-dtype", "fp32"])
    with torch.device("meta"):
        from transformers import Qwen3_5ForConditionalGeneration

        n = sum(p.numel() for p in Qwen3_5ForConditionalGeneration(Qwen3_5Config.from_dict(config)).parameters())
    gib = n * 4 / 1024**3
    assert gib > 0.05 and "frozen VLM" in out
    for a, b in zip(plain, with_vlm):
        assert b - a == pytest.approx(gib, abs=2e-3)
    (folder / "config.json").write_text(json.dumps({"architectures": ["UMT5EncoderModel"], "model_type": "umt5"}))
    assert main(args + ["--vlm", str(folder)]) == 2
    assert "config.json" in capsys.readouterr().err


def test_context_parallel_divides_the_layers_activations(capsys):
    """parallel.cp=2 halves what the coupled layers keep (each rank holds half of every sample's
    tokens), leaves the input and output sides whole, and shards the optimizer over DP x CP."""
    import re

    def busiest(*overrides):
        assert main(["--config", "configs/smoke.yaml", "--gpus", "4", *DIMS, *overrides]) == 0
        out = capsys.readouterr().out
        row = next(line for line in out.splitlines() if line.strip().startswith("0 |"))
        return out, [float(x) for x in re.findall(r"\d+\.\d+", row.split("|", 2)[2])]

    out1, (w1, g1, a1, m1, act1, full1, tot1) = busiest()
    out2, (w2, g2, a2, m2, act2, full2, tot2) = busiest("parallel.cp=2")
    assert "4 ranks = TP 1 x PP 1 x CP 2 x DP 2" in out2
    assert (w2, g2, a2) == (w1, g1, a1)  # weights replicated over CP; AdamW sharded over DP x CP = 4 either way
    assert act1 / 2 < act2 < act1 and full1 / 2 < full2 < full1


def test_vae_encoder_flops_on_meta_equal_the_real_encoder_and_grow_per_four_frames():
    """The Wan VAE's encoder FLOPs counted on meta tensors (what the Wan2.2 table of
    bench/prepare.py uses) equal the count of a real encode on CPU for make-tiny's VAE; the
    causal encoder costs the first frame alone, then the same per 4 more frames."""
    from wallwm_pretrain.convert.tiny import VAE
    from wallwm_pretrain.plan.vae import WAN22_VAE, vae_encode_flops, video_hours_per_gpu_day

    from torch.nn.attention import SDPBackend, sdpa_kernel

    meta = [vae_encode_flops(VAE, f, 32, 32) for f in (1, 5, 9)]
    # the real encoder on CPU, with attention in its math form: torch's FLOP counter has no
    # formula for the CPU flash kernel, so that kernel's matmuls would go uncounted
    with sdpa_kernel(SDPBackend.MATH):
        real = vae_encode_flops(VAE, 5, 32, 32, device="cpu")
    assert meta[1] == real > 0
    assert meta[2] - meta[1] == meta[1] - meta[0] > 0
    assert vae_encode_flops(WAN22_VAE, 1, 64, 64) > 50 * vae_encode_flops(VAE, 1, 64, 64)
    assert video_hours_per_gpu_day(2e15, 5.0, 1000.0, 0.5) == pytest.approx(86_400 * 0.25 * 5.0 / 3600)
    with pytest.raises(ValueError, match="1 \\+ 4k frames"):
        vae_encode_flops(VAE, 4, 32, 32)
