"""The real-model path end to end in one test: shards -> encode-latents -> embed-captions ->
convert wan -> train from the converted weights on what the loader reads -> stop -> resume,
with the resumed run's losses equal to the uninterrupted run's."""

from __future__ import annotations

import math

from data_tools.latents import encode_latents
from data_tools.textstates import embed_captions
from wallwm_pretrain.config import load_config
from wallwm_pretrain.convert.__main__ import main as convert

ACTION = ["model.hidden_size=32", "model.num_heads=2", "model.ffn_hidden_size=64", "model.action_dim=4",
          "model.state_dim=8"]


def _run(cfg_path, tmp_path, name, *extra):
    from wallwm_pretrain.parallel import shutdown_parallel
    from wallwm_pretrain.trainer import Trainer

    cfg = load_config(cfg_path, [f"train.runs_root={tmp_path / 'runs'}", f"train.run_name={name}",
                                 "train.device=cpu", "train.log_every=1", "data.batch_size=2",
                                 "data.max_frames=12", "train.steps=4", "optim.warmup_steps=1", *extra])
    trainer = Trainer(cfg)
    try:
        return trainer, trainer.train()
    finally:
        shutdown_parallel()


def test_the_wan_path_trains_on_encoded_shards_and_resumes_exactly(dt_shards_copy, dt_tiny_wan, dt_one_thread,
                                                                   tmp_path):
    encode_latents(dt_shards_copy, dt_tiny_wan / "vae", progress=False)
    embed_captions(dt_shards_copy, dt_tiny_wan / "text_encoder", progress=False)
    init = tmp_path / "init"
    assert convert(["wan", "--src", str(dt_tiny_wan / "transformer"), "--out", str(init), "--num-views", "2",
                    "model.video_input=latents", f"data.shards={dt_shards_copy}", *ACTION]) == 0
    cfg_path = init / "config.yaml"
    common = [f"model.init_from={init}", "train.save_every=0"]
    straight, _ = _run(cfg_path, tmp_path, "straight", *common)
    _run(cfg_path, tmp_path, "split", *common, "train.stop_after=2")
    resumed, summary = _run(cfg_path, tmp_path, "split", *common, "train.resume=auto")
    assert summary.start_step == 2
    losses = {k: [v for _, v in straight.history[k]] for k in ("loss", "loss_video", "loss_action")}
    assert all(math.isfinite(v) and v > 0 for v in losses["loss_video"] + losses["loss_action"])
    # the resumed run carries the first invocation's history: all four steps, exactly the
    # uninterrupted run's (same data, noise, RNG and optimizer state on CPU)
    assert [s for s, _ in resumed.history["loss"]] == [1, 2, 3, 4]
    assert [v for _, v in resumed.history["loss"]] == losses["loss"]
