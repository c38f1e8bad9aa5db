"""``eval worldmodel`` on a Wan-tower checkpoint: a tiny two-view Wan run (make-tiny's VAE, UMT5
and transformer, real shards with VAE latents and UMT5 states, as ``make smoke-wan``) trained for
two steps with ``train.video_eval_every=2`` (and a chunk-mode one) predicts held-out events' video
through the frozen VAE; the table has the model, the chunk-mode and the copy-the-first-frame
baseline, the per-event scores equal direct torchmetrics calls on the saved frames, the saved
predictions are the video sampler's every r-th decoded frame, and the scores the run logged at
step 2 are the ones ``eval worldmodel`` gives its step-2 checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.eval.test_worldmodel import _direct

ACTION = ["model.hidden_size=32", "model.num_heads=2", "model.ffn_hidden_size=64", "model.action_dim=4",
          "model.state_dim=8"]
MAX_FRAMES, EVENTS, K = 12, 3, 4


@pytest.fixture(scope="module")
def wan_world(tmp_path_factory):
    from data_tools.latents import encode_latents
    from data_tools.shards import build_shards
    from data_tools.synthworld import synthesize
    from data_tools.textstates import embed_captions
    from wallwm_pretrain.config import load_config
    from wallwm_pretrain.convert.__main__ import main as convert
    from wallwm_pretrain.convert.tiny import make_tiny
    from wallwm_pretrain.parallel import shutdown_parallel
    from wallwm_pretrain.trainer import Trainer

    base = tmp_path_factory.mktemp("worldmodel_wan")
    models = make_tiny(base / "models", seed=0)
    for name, episodes, seed in (("train", 4, 7), ("heldout", 2, 8)):
        synthesize(base / f"{name}_src", episodes, seed, progress=False)
        build_shards(base / f"{name}_src", base / name, level="L1", seed=0, image_size=32, samples_per_shard=8,
                     progress=False)
    encode_latents(base / "train", models["vae"], progress=False)
    embed_captions(base / "train", models["text_encoder"], progress=False)
    init = base / "init"
    assert convert(["wan", "--src", str(models["transformer"]), "--out", str(init), "--num-views", "2",
                    "model.video_input=latents", f"data.shards={base / 'train'}", *ACTION]) == 0
    cfg = load_config(init / "config.yaml", [
        f"model.init_from={init}", f"train.runs_root={base / 'runs'}", "train.run_name=wan", "train.device=cpu",
        "data.batch_size=2", f"data.max_frames={MAX_FRAMES}", "train.steps=2", "train.save_every=2",
        "optim.warmup_steps=1", "train.video_eval_every=2", f"train.video_eval_shards={base / 'heldout'}",
        f"train.video_eval_events={EVENTS}", "train.video_eval_denoise_steps=2"])
    chunk = load_config(init / "config.yaml", [
        f"model.init_from={init}", f"train.runs_root={base / 'runs'}", "train.run_name=wan_chunk", "train.device=cpu",
        "data.batch_size=2", "data.mode=chunk", "data.chunk_horizon=8", f"data.max_frames={MAX_FRAMES}",
        "train.steps=2", "train.save_every=2", "optim.warmup_steps=1"])
    try:
        assert Trainer(cfg).train().end_step == 2
        assert Trainer(chunk).train().end_step == 2
    finally:
        shutdown_parallel()
    return base, base / "runs" / "wan", base / "heldout"


@pytest.fixture(scope="module")
def scored(wan_world):
    from wallwm_pretrain.eval.__main__ import main

    base, run, heldout = wan_world
    out = base / "out"
    assert main(["worldmodel", "--policy", str(run), "--shards", str(heldout), "--events", str(EVENTS),
                 "--chunk", str(run.with_name("wan_chunk")), "--denoise-steps", "2", "--save-frames", "--out", str(out), "--runs-root", str(base / "runs"),
                 "--length-edges", "8"]) == 0
    return out, heldout, json.loads((out / "results.json").read_text())


def test_wan_scores_match_torchmetrics_on_the_saved_frames(scored):
    import webdataset as wds

    out, heldout, results = scored
    assert results["methods"] == ["model", "chunk_mode", "copy_first_frame"] and results["frame_stride"] == K
    recorded_in_shards = {}
    for tar in sorted(heldout.glob("*.tar")):
        for s in wds.WebDataset(str(tar), shardshuffle=False).decode():
            recorded_in_shards[s["__key__"]] = s["frames.npy"]
    first = list(recorded_in_shards)[:EVENTS]
    assert [r["key"] for r in results["events"]] == [k for k in first if len(recorded_in_shards[k]) > K]
    assert results["events"]
    for row in results["events"]:
        frames = np.load(out / "frames" / f"{row['key']}.npz")
        recorded = frames["recorded"]
        # the event's first data.max_frames = 12 steps, one frame per latent frame (K_p = r = 4): steps 0, 4, 8
        assert np.array_equal(recorded, recorded_in_shards[row["key"]][:MAX_FRAMES:K])
        assert recorded.shape[1:] == (2, 32, 32, 3)  # both views at the shards' resolution
        for method in results["methods"]:
            assert frames[method].shape == recorded.shape and frames[method].dtype == np.uint8
            assert np.array_equal(frames[method][0], recorded[0])
            psnr, ssim = _direct(frames[method], recorded)
            assert row["scores"][method]["psnr"] == pytest.approx(psnr, abs=1e-4), (row["key"], method)
            assert row["scores"][method]["ssim"] == pytest.approx(ssim, abs=1e-5), (row["key"], method)
        for method in ("model", "chunk_mode"):  # decoded, not copied
            assert not np.array_equal(frames[method][1:], frames["copy_first_frame"][1:])
    table = (out / "results.md").read_text()
    for column in ("PSNR model", "PSNR chunk_mode", "PSNR copy_first_frame", "SSIM model", "SSIM copy_first_frame"):
        assert column in table
    assert sorted(results["grids"]) == sorted({r["task"] for r in results["events"]})


def test_the_prediction_is_the_video_samplers_every_r_th_decoded_frame(wan_world, scored):
    """The predictor is the video tower's sampler (eval/wan_video.py) with the run's shift and the
    caption's Wan context: decoded frames 4 and 8 of a 3-latent-frame video are the prediction."""
    import torch

    from wallwm_pretrain.eval.policy import read_stats
    from wallwm_pretrain.eval.video_predict import read_heldout_events
    from wallwm_pretrain.eval.wan_policy import frozen_of
    from wallwm_pretrain.eval.wan_video import make_scheduler, sample_video
    from wallwm_pretrain.export import load_model
    from wallwm_pretrain.model.wan.text import pad_text_context

    _, run, heldout = wan_world
    out, _, results = scored
    model, cfg = load_model(str(run), "cpu")
    frozen = frozen_of(read_stats(cfg.data.shards))
    row = results["events"][0]
    events = read_heldout_events(heldout, MAX_FRAMES, EVENTS)
    i = [e.key for e in events].index(row["key"])  # event i's noise is seeded with --seed + i = i
    event = events[i]
    states, valid = frozen.text_batch([event.caption])
    context = pad_text_context(states, valid, cfg.model.text_len)[0]
    frames = -(-event.length // K)
    video = sample_video(model.video, frozen, torch.from_numpy(np.array(event.frames[:1])), context,
                         1 + K * (frames - 1), 2, torch.Generator().manual_seed(i),
                         scheduler=make_scheduler("euler", cfg.model.video_time_shift)).frames[0]
    assert video.shape == (2, 1 + K * (frames - 1), 32, 32, 3)
    saved = np.load(out / "frames" / f"{row['key']}.npz")
    np.testing.assert_array_equal(saved["model"][1:], video[:, K::K].permute(1, 0, 2, 3, 4).numpy())
    # chunk mode (data.chunk_horizon = 8: two latent frames a chunk) chains chunks on the task, each
    # from the previous chunk's last predicted frame, one noise stream through the event
    chunk_model, chunk_cfg = load_model(str(run.with_name("wan_chunk")), "cpu")
    states, valid = frozen.text_batch([event.task])
    context = pad_text_context(states, valid, chunk_cfg.model.text_len)[0]
    gen, chained = torch.Generator().manual_seed(i), [event.frames[0]]
    while len(chained) < frames:
        first = torch.from_numpy(np.array(chained[-1]))[None]
        clip = sample_video(chunk_model.video, frozen, first, context, 1 + K, 2, gen,
                            scheduler=make_scheduler("euler", chunk_cfg.model.video_time_shift)).frames[0]
        chained.append(clip[:, K].numpy())
    np.testing.assert_array_equal(saved["chunk_mode"], np.stack(chained))


def test_wan_training_logs_the_same_scores_every_video_eval_every_steps(wan_world, scored):
    from mlflow.tracking import MlflowClient

    base, run, _ = wan_world
    _, _, results = scored
    assert sorted(p.name for p in (run / "video_eval" / "step_00000002").glob("*.png"))
    client = MlflowClient(f"sqlite:///{base / 'runs' / 'mlflow.db'}")
    [mlflow_run] = client.search_runs([client.get_experiment_by_name("wallwm-pretrain").experiment_id],
                                      filter_string="attributes.run_name = 'wan'")
    logged = {k: client.get_metric_history(mlflow_run.info.run_id, k)
              for k in ("video_eval/psnr", "video_eval/ssim", "video_eval/psnr_copy_first_frame")}
    assert [m.step for m in logged["video_eval/psnr"]] == [2]
    # the step-2 checkpoint, the same events and seeds (train.seed = --seed = 0): the same scores
    assert logged["video_eval/psnr"][0].value == pytest.approx(results["overall"]["model"]["psnr"], abs=1e-3)
    assert logged["video_eval/ssim"][0].value == pytest.approx(results["overall"]["model"]["ssim"], abs=1e-4)
    assert logged["video_eval/psnr_copy_first_frame"][0].value == pytest.approx(
        results["overall"]["copy_first_frame"]["psnr"])


def test_a_wan_checkpoint_without_its_frozen_models_fails_with_one_line(wan_world, tmp_path, capsys):
    """Statistics whose index.json names no VAE folder: the predictor cannot encode the first
    frame, and says which key of which file to fix."""
    from wallwm_pretrain.eval.__main__ import main

    base, run, heldout = wan_world
    index = json.loads((base / "train" / "index.json").read_text())
    index["latents"]["source"] = str(tmp_path / "no_vae")
    (tmp_path / "stats").mkdir()
    (tmp_path / "stats" / "index.json").write_text(json.dumps(index))
    capsys.readouterr()
    assert main(["worldmodel", "--policy", str(run), "--shards", str(heldout), "--stats", str(tmp_path / "stats"),
                 "--no-mlflow", "--out", str(tmp_path / "wm")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "latents.source" in err and "not a folder here" in err
