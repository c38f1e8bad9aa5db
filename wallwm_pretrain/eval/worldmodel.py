"""``python -m wallwm_pretrain.eval worldmodel``: the world model's predicted video, scored.

For each held-out event the checkpoint predicts the event's video from its first frame, caption
(or task) and state (``eval/video_predict.py``), and the prediction is scored against the
recorded frames (``eval/video_metrics.py``: PSNR, SSIM from torchmetrics; LPIPS/FVD skipped with
the reason), beside two baselines on the same events: a chunk-mode checkpoint (``--chunk``) and
"copy the first frame" (no motion). Scores per event, per task and per event length go to
``--out`` (``results.json``, ``results.md``, ``grids/<task>.png``: recorded, predicted and error
rows of the task's first event) and to MLflow (experiment ``<tracking.experiment>-eval``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from wallwm_pretrain.eval.report import markdown_table

COPY = "copy_first_frame"
DEFAULT_EDGES = [16, 32, 64, 128]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m wallwm_pretrain.eval worldmodel", description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  python -m wallwm_pretrain.eval worldmodel --policy runs/smoke --shards data/shards/heldout "
               "--chunk runs/smoke-chunk --events 16 --denoise-steps 10")
    p.add_argument("--policy", required=True, help="the towers checkpoint: run folder, step folder or exported .safetensors")
    p.add_argument("--shards", required=True, help="held-out event shards (build-shards output, frames at the model's size)")
    p.add_argument("--events", type=int, default=None, metavar="N", help="score the first N events (default: all)")
    p.add_argument("--denoise-steps", type=int, default=10, metavar="K", help="Euler steps of the flow per prediction (default 10)")
    p.add_argument("--chunk", default=None, metavar="CKPT",
                   help="a chunk-mode checkpoint of the same data: the chunk-mode baseline (chained chunks, open loop)")
    p.add_argument("--stats", default=None, help="index.json (or its folder) of the policy's training shards "
                                                 "(default: the checkpoint's data.shards)")
    p.add_argument("--chunk-stats", default=None, help="the same for --chunk")
    p.add_argument("--max-steps", type=int, default=None,
                   help="control steps of each event to predict (default: the policy's data.max_frames)")
    p.add_argument("--length-edges", type=int, nargs="+", default=DEFAULT_EDGES, metavar="STEPS",
                   help=f"event-length bins' upper edges in control steps (default {' '.join(map(str, DEFAULT_EDGES))})")
    p.add_argument("--grid-every", type=int, default=1, metavar="J", help="grid columns: every J-th predicted frame (default 1)")
    p.add_argument("--save-frames", action="store_true", help="also write each event's frames (recorded, every "
                                                               "prediction) as frames/<event>.npz")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise (event i draws from seed + i)")
    p.add_argument("--out", default=None, help="results folder (default: <run>/eval/worldmodel)")
    p.add_argument("--runs-root", default=None, help="runs root of the MLflow store (default: the run config's)")
    p.add_argument("--no-mlflow", action="store_true", help="write the files only")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device of the model (default cpu)")
    return p


def default_out(ckpt: Path) -> Path:
    if ckpt.is_file():
        return ckpt.with_name(ckpt.name + ".worldmodel")
    run = ckpt.parent.parent if (ckpt / "manifest.json").is_file() else ckpt
    return run / "eval" / "worldmodel"


def length_bin(steps: int, edges: list[int]) -> str:
    lo = 1
    for edge in sorted(edges):
        if steps <= edge:
            return f"{lo}-{edge}"
        lo = edge + 1
    return f">{sorted(edges)[-1]}"


def _load(ckpt: str, stats: str | None, denoise_steps: int, device: str):
    from wallwm_pretrain.eval.video_predict import predictor_for
    from wallwm_pretrain.export import load_model

    model, cfg = load_model(ckpt, device)
    return cfg, predictor_for(model, cfg, stats or cfg.data.shards, denoise_steps)


def _means(rows: list[dict], methods: list[str], metrics) -> dict:
    return {m: {k: float(np.mean([r["scores"][m][k] for r in rows])) for k in metrics} for m in methods} | {"events": len(rows)}


def score(args: argparse.Namespace) -> dict:
    """Everything the command does but printing; returns the results (also in --out)."""
    import torch

    from wallwm_pretrain.eval.video_grid import save_video_grid
    from wallwm_pretrain.eval.video_metrics import METRICS, skipped_metrics, video_scores
    from wallwm_pretrain.eval.video_predict import (
        WorldModelError, copy_first_frame, read_heldout_events, recorded_video,
    )

    if args.denoise_steps < 1 or (args.events is not None and args.events < 1):
        raise ValueError("--denoise-steps and --events must be >= 1")
    started = time.perf_counter()
    cfg, predict = _load(args.policy, args.stats, args.denoise_steps, args.device)
    predictors = {"model": predict}
    stride = cfg.model.frame_stride
    if args.chunk:
        ccfg, chunk = _load(args.chunk, args.chunk_stats, args.denoise_steps, args.device)
        if ccfg.data.mode != "chunk":
            raise WorldModelError(f"--chunk {args.chunk}: a {ccfg.data.mode}-mode checkpoint, not a chunk-mode one")
        if ccfg.model.frame_stride != stride or ccfg.model.image_size != cfg.model.image_size:
            raise WorldModelError(f"--chunk {args.chunk}: frame stride / image size {ccfg.model.frame_stride} / "
                                  f"{ccfg.model.image_size}, the policy's {stride} / {cfg.model.image_size}")
        predictors["chunk_mode"] = chunk
    methods = [*predictors, COPY]
    out = Path(args.out) if args.out else default_out(Path(args.policy))
    out.mkdir(parents=True, exist_ok=True)
    events = read_heldout_events(args.shards, args.max_steps or cfg.data.max_frames, args.events, cfg.model.image_size)
    rows, skipped, grids = [], [], {}
    for i, event in enumerate(events):
        recorded = recorded_video(event, stride)
        if recorded.shape[0] < 2:
            skipped.append({"key": event.key, "reason": f"{event.length} steps: no frame after the first to predict"})
            continue
        predictions = {}
        for name, predictor in predictors.items():
            predictions[name] = predictor(event, torch.Generator(device=args.device).manual_seed(args.seed + i))
        predictions[COPY] = copy_first_frame(event, stride)
        rows.append({"key": event.key, "task": event.task, "steps": event.length,
                     "length_bin": length_bin(event.length, args.length_edges),
                     "scores": {m: video_scores(predictions[m], recorded) for m in methods}})
        if args.save_frames:
            (out / "frames").mkdir(exist_ok=True)
            np.savez_compressed(out / "frames" / f"{_safe(event.key)}.npz", recorded=recorded, **predictions)
        if event.task not in grids:
            grids[event.task] = str(save_video_grid(
                recorded, predictions["model"], out / "grids" / f"{_safe(event.task) or 'task'}.png",
                title=f"{event.task}: {event.caption} ({event.key}, {cfg.data.mode} mode)", every=args.grid_every,
                stride=stride))
    if not rows:
        raise WorldModelError(f"{args.shards}: none of the {len(events)} events is longer than one latent frame")
    by = lambda field: {v: _means([r for r in rows if r[field] == v], methods, METRICS)  # noqa: E731
                        for v in sorted({r[field] for r in rows})}
    results = {
        "policy": str(args.policy), "mode": cfg.data.mode, "chunk": args.chunk, "shards": str(args.shards),
        "denoise_steps": args.denoise_steps, "seed": args.seed, "frame_stride": stride, "methods": methods,
        "overall": _means(rows, methods, METRICS), "tasks": by("task"), "lengths": by("length_bin"),
        "events": rows, "skipped_events": skipped, "skipped_metrics": skipped_metrics(), "grids": grids,
    }
    results["table"] = results_table(results, METRICS)
    results["seconds"] = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    notes = [f"- {m}: skipped, {why}" for m, why in results["skipped_metrics"].items()]
    notes += [f"- event {s['key']} skipped: {s['reason']}" for s in skipped]
    (out / "results.md").write_text(f"# Predicted video of {args.policy} on {args.shards}\n\n{results['table']}\n\n"
                                    + "\n".join(notes) + "\n\n## Per event\n\n" + events_table(rows, methods) + "\n")
    if not args.no_mlflow:
        results["mlflow_run"] = log_to_mlflow(results, cfg, args, out)
        (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")  # now naming its MLflow run
    results["out"] = str(out)
    return results


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")


def results_table(results: dict, metrics) -> str:
    """Markdown: one row per slice (all, each task, each length bin), PSNR and SSIM per method."""
    head = ["slice", "events"] + [f"{k.upper()} {m}" for k in metrics for m in results["methods"]]

    def row(label, agg):
        return [label, str(agg["events"])] + [f"{agg[m][k]:.3f}" for k in metrics for m in results["methods"]]

    rows = [row("all", results["overall"])]
    rows += [row(f"task {t}", a) for t, a in results["tasks"].items()]
    rows += [row(f"length {b} steps", a) for b, a in results["lengths"].items()]
    return markdown_table(head, rows)


def events_table(rows: list[dict], methods: list[str]) -> str:
    """Markdown: one row per scored event."""
    head = ["event", "task", "steps"] + [f"{k.upper()} {m}" for k in ("psnr", "ssim") for m in methods]
    return markdown_table(head, [[r["key"], r["task"], str(r["steps"])]
                                 + [f"{r['scores'][m][k]:.3f}" for k in ("psnr", "ssim") for m in methods] for r in rows])


def log_to_mlflow(results: dict, cfg, args: argparse.Namespace, out: Path) -> str:
    from wallwm_pretrain.tracking import MLflowTracker, default_store

    uri, artifacts = (cfg.tracking.uri, None) if cfg.tracking.uri else default_store(args.runs_root or cfg.train.runs_root)
    tracker = MLflowTracker(uri, f"{cfg.tracking.experiment}-eval", f"{cfg.train.run_name}-worldmodel",
                            artifact_location=artifacts, tags={"wallwm.checkpoint": str(args.policy)})
    metric = lambda *parts: "/".join(re.sub(r"[^A-Za-z0-9_.\- ]+", "_", p) for p in parts)  # noqa: E731
    with tracker:
        tracker.log_params({"checkpoint": str(args.policy), "chunk": str(args.chunk or ""), "shards": str(args.shards),
                            "events": len(results["events"]), "denoise_steps": args.denoise_steps, "seed": args.seed})
        values = {}
        for m in results["methods"]:
            for k in ("psnr", "ssim"):
                values[metric("worldmodel", k, m)] = results["overall"][m][k]
                for t, agg in results["tasks"].items():
                    values[metric("worldmodel", k, m, f"task {t}")] = agg[m][k]
                for b, agg in results["lengths"].items():
                    values[metric("worldmodel", k, m, f"length {b}")] = agg[m][k]
        tracker.log_metrics(values, 0)
        for name in ("results.json", "results.md"):
            tracker.log_artifact(out / name)
        for png in results["grids"].values():
            tracker.log_artifact(Path(png), "grids")
    return tracker.run_id


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", module="megatron")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from wallwm_pretrain.checkpoint import CheckpointError

    try:
        results = score(args)
    except (CheckpointError, ValueError) as exc:  # WorldModelError, the data's InputError, PolicyError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(results["table"])
    for m, why in results["skipped_metrics"].items():
        print(f"{m}: skipped, {why}")
    print(f"results in {results['out']} ({results['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
