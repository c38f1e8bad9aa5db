"""python -m wallwm_pretrain.eval: closed-loop success in Meta-World, open-loop action error;
``python -m wallwm_pretrain.eval worldmodel ...``: the predicted video scored (eval/worldmodel.py).

    python -m wallwm_pretrain.eval --ckpt runs/mw_event --env metaworld \\
        --tasks pick-place-v3 drawer-open-v3 --episodes 20 --heldout data/shards/mw_heldout_L1
    python -m wallwm_pretrain.eval --server ws://127.0.0.1:8000 --tasks pick-place-v3 --episodes 20 --out eval_remote
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

from tqdm import tqdm

DEFAULT_TASKS = ["pick-place-v3", "drawer-open-v3", "button-press-topdown-v3"]
DEFAULT_WAYS = {"events": ["script"], "context": ["atomic"]}  # the planners' options (eval/planners)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m wallwm_pretrain.eval",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Run a trained checkpoint closed-loop in Meta-World and report the success rate per task\n"
            "with a 95% Wilson interval, rollout frame strips (PNG) and, with --heldout, the open-loop\n"
            "action error on held-out events. Event-mode checkpoints walk the task's event script and\n"
            "execute as many denoised steps as the remaining-time head predicts; chunk-mode\n"
            "checkpoints execute fixed chunks of data.chunk_horizon steps; unified-mode checkpoints\n"
            "execute such chunks on windows with history frames, each chunk conditioned on the\n"
            "--context source(s). Results go to --out\n"
            "(results.json, results.md, strips/) and to MLflow (experiment '<tracking.experiment>-eval').\n"
            "Observations are rendered at --render-size (the recorder's --image-size) and resized to\n"
            "the model's size as build-shards did. With --server the same episodes run through a policy\n"
            "server (python -m wallwm_pretrain.serve) instead of an in-process model; same seeds and\n"
            "checkpoint give the same successes.\n\n"
            "'python -m wallwm_pretrain.eval worldmodel --help': the world model's predicted video on held-out\n"
            "events, scored (PSNR, SSIM) against the recorded frames beside a chunk-mode and a copy-the-first-\n"
            "frame baseline."
        ),
        epilog=(
            "example:\n"
            "  python -m wallwm_pretrain.eval --ckpt runs/mw_event --env metaworld \\\n"
            "      --tasks pick-place-v3 drawer-open-v3 --episodes 20 --heldout data/shards/mw_heldout_L1\n"
            "  python -m wallwm_pretrain.eval --server ws://127.0.0.1:8000 --tasks pick-place-v3 --episodes 20 --out eval_remote"
        ),
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--ckpt", help="run folder (newest checkpoint), checkpoint step folder, or exported .safetensors")
    where.add_argument("--server", metavar="URI",
                       help="evaluate through a policy server (ws://HOST:PORT) instead of loading --ckpt; needs --out, "
                            "no --heldout/--stats, no MLflow logging (the server holds the model and its config)")
    p.add_argument("--api-key", default=os.environ.get("WALLWM_API_KEY"),
                   help="with --server: the server's API key (default: $WALLWM_API_KEY)")
    p.add_argument("--env", default="metaworld", choices=["metaworld"], help="simulator (default metaworld)")
    p.add_argument("--adapter", metavar="YAML",
                   help="environment adapter: which cameras and state entries feed the model, how actions map back "
                        "(default: the model's views and state layout; configs/adapters/metaworld.yaml spells it out)")
    p.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS, metavar="TASK",
                   help=f"Meta-World tasks to evaluate (default: {' '.join(DEFAULT_TASKS)})")
    p.add_argument("--episodes", type=int, default=10, help="episodes per task (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the episode layouts and the sampling noise (default 0)")
    p.add_argument("--max-steps", type=int, default=200, help="step budget per episode (default 200, as recorded)")
    p.add_argument("--render-size", type=int, default=64,
                   help="camera resolution before resizing to the model's size; the recorder's --image-size (default 64)")
    p.add_argument("--denoise-steps", type=int, default=10, help="Euler steps of the flow per plan (default 10; with --server the server's own)")
    p.add_argument("--max-plans-per-event", type=int, default=4,
                   help="event mode: plans of one event before moving to the next regardless (default 4)")
    p.add_argument("--events", nargs="+", default=DEFAULT_WAYS["events"], choices=["script", "predicted"],
                   help="event mode: where each next event comes from: 'script' (the task's fixed event script, "
                        "the default), 'predicted' (the --conditioner chooses it and its remaining time from the "
                        "cameras); both ('--events script predicted') run the same episodes and seeds each way and "
                        "report them side by side")
    p.add_argument("--context", nargs="+", default=DEFAULT_WAYS["context"], choices=["atomic", "global", "staircase"],
                   help="unified mode: each chunk's text context: 'atomic' (the caption of the scripted event in "
                        "progress, the default), 'global' (the task through the conditioner's heads), 'staircase' "
                        "(Staircase latents of the task); several run the same episodes and seeds each way and "
                        "report them side by side")
    p.add_argument("--mode", choices=["event", "chunk", "unified"],
                   help="the mode to plan in (default: the checkpoint's data.mode). Event and unified mode share "
                        "the towers, so either checkpoint plans in either (unified: the history and chunk length "
                        "of its config); chunk-mode checkpoints plan as trained")
    p.add_argument("--conditioner", metavar="CKPT",
                   help="with --events predicted: a model.kind=conditioner run folder, checkpoint or export")
    p.add_argument("--conditioner-stats", metavar="SHARDS",
                   help="the conditioner's training shard folder (default: data.shards of its run config)")
    p.add_argument("--stats", help="training shard folder (or its index.json) for normalisation; default: data.shards of the run config")
    p.add_argument("--heldout", help="held-out shard folder for the open-loop action error (L1 events for event mode, "
                                     "episodes for chunk mode)")
    p.add_argument("--out", help="folder for results (default: <run folder>/eval, or <file>.eval/ for an export)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the model runs (default auto: cuda if available)")
    p.add_argument("--no-tracking", action="store_true",
                   help="do not log to MLflow (nor does a run trained with tracking.enabled=false)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default 0: torch's choice; 1 is fastest for small models on a busy CPU)")
    p.add_argument("--runs-root", help="MLflow store's runs root (default: train.runs_root of the run config)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def default_out(ckpt: Path) -> Path:
    if ckpt.is_file():
        return ckpt.with_name(ckpt.name + ".eval")
    run = ckpt.parent.parent if (ckpt / "manifest.json").is_file() else ckpt
    return run / "eval"


def evaluate(args: argparse.Namespace) -> dict:
    """Everything the command does; returns the results dict (also written to --out)."""
    import torch

    from sim.metaworld.gl import check_rendering
    from sim.metaworld.heap import reproducible_heap
    from sim.metaworld.tasks import get_spec
    from wallwm_pretrain.data.loader import read_index
    from wallwm_pretrain.eval.adapter import EnvAdapter
    from wallwm_pretrain.eval.openloop import open_loop_error
    from wallwm_pretrain.eval.planners import choose, served_modes
    from wallwm_pretrain.eval.wan_policy import WanPolicy, load_policy

    if args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    if args.threads:
        torch.set_num_threads(args.threads)
    for task in args.tasks:
        get_spec(task)  # KeyError naming the supported tasks
    if args.server:
        for flag, value in (("--heldout", args.heldout), ("--stats", args.stats)):
            if value:
                raise ValueError(f"{flag} needs the model in-process; with --server the server holds the model "
                                 f"(give its statistics to the server's --stats)")
        if not args.out:
            raise ValueError("--out is required with --server (there is no run folder to write into)")
    args.events = list(dict.fromkeys(args.events))
    args.context = list(dict.fromkeys(args.context))
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but torch.cuda.is_available() is False")
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    if args.server:
        from wallwm_pretrain.eval.remote import RemotePolicy

        policy = RemotePolicy(args.server, args.api_key)
        out, cfg = Path(args.out), None
        checkpoint = f"{args.server} ({policy.metadata.get('checkpoint')}, step {policy.metadata.get('checkpoint_step')})"
    else:
        ckpt = Path(args.ckpt)
        out = Path(args.out) if args.out else default_out(ckpt)
        checkpoint = str(ckpt)
    try:
        if not args.server:
            policy = load_policy(ckpt, args.stats, device, args.denoise_steps, args.mode)
            cfg = policy.cfg
            if args.heldout and isinstance(policy, WanPolicy):
                raise ValueError("--heldout: the open-loop action error runs the small towers' sampler; a Wan-tower "
                                 "checkpoint runs closed loop only")
        if args.mode and args.mode != policy.mode:  # a server plans in its own mode (not a dispatch: two names compared)
            raise ValueError(f"--mode {args.mode}, but the server plans in {policy.mode} mode")
        chosen = choose(policy.mode, {"events": args.events, "context": args.context}, DEFAULT_WAYS)
        if args.server and not all(cls.served for _, cls in chosen):
            raise ValueError(f"{policy.mode}-mode checkpoints run in-process (--ckpt); the policy server speaks "
                             f"{' and '.join(served_modes())} mode")
        if args.heldout:
            read_index(args.heldout)  # a bad --heldout fails now, not after the rollouts
        adapter = EnvAdapter.from_yaml(args.adapter) if args.adapter else None
        results: dict = {
            "checkpoint": checkpoint, "mode": policy.mode, "horizon": policy.horizon, "seed": args.seed,
            "episodes_per_task": args.episodes, "max_steps": args.max_steps,
            "denoise_steps": policy.metadata["denoise_steps"] if args.server else args.denoise_steps,
            "tasks": {},
        }
        conditioner = None
        if any(cls.needs_conditioner for _, cls in chosen):
            from wallwm_pretrain.eval.conditioner import ConditionerPlanner

            if not args.conditioner:
                raise ValueError("--events predicted needs --conditioner CKPT (a model.kind=conditioner checkpoint)")
            conditioner = ConditionerPlanner.load(args.conditioner, args.conditioner_stats, device)
            results["conditioner"] = str(args.conditioner)
        elif args.conditioner:
            raise ValueError("--conditioner is read by --events predicted only")
        planners = [cls(policy, way, conditioner=conditioner if cls.needs_conditioner else None,
                        max_plans_per_event=args.max_plans_per_event) for way, cls in chosen]
        ways = [p.way for p in planners]
        runs = results[planners[0].results_key] = {}
        with reproducible_heap():
            results["gl_backend"] = check_rendering()
            for planner in planners:
                runs[planner.way] = run_tasks(policy, args, adapter, planner, out)
        first = runs[ways[0]]
        results["tasks"], results["overall"] = first["tasks"], first["overall"]
        if args.heldout:
            results["open_loop"] = open_loop_error(policy, args.heldout, args.seed, progress=not args.quiet)
        results["seconds"] = time.perf_counter() - started
        table = results_table(runs, ways, planners[0].option or "events")
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        (out / "results.md").write_text(table + "\n")
        results["table"] = table
        results["out"] = str(out)
        if cfg is not None and not args.no_tracking and cfg.tracking.enabled:
            results["mlflow_run_id"] = log_to_mlflow(results, cfg, args, out)
        return results
    finally:
        if args.server:
            policy.close()


def run_tasks(policy, args: argparse.Namespace, adapter, planner, out: Path) -> dict:
    """Closed-loop episodes of every task with one way of planning (``planner``, ``eval/planners``)."""
    from wallwm_pretrain.eval.metaworld import MetaWorldRunner
    from wallwm_pretrain.eval.report import save_strip, wilson_interval

    tag = f"{policy.mode} mode" + (f", {planner.tag}" if planner.tag else "")
    default = planner.way in DEFAULT_WAYS.get(planner.option, [planner.way])  # strips keep their plain names
    bar = tqdm(total=len(args.tasks) * args.episodes, desc=f"eval ({tag})", unit="ep", disable=args.quiet)
    tasks: dict = {}
    for task in args.tasks:
        runner = MetaWorldRunner(policy, task, args.max_steps, args.render_size, adapter=adapter, planner=planner)
        try:
            episodes = []
            for i in range(args.episodes):
                ep = runner.run(i, args.seed)
                episodes.append(ep)
                if i == 0:
                    verdict = "success" if ep.success else "failure"
                    name = f"{task}_ep{i:03d}.png" if default else f"{task}_{planner.way}_ep{i:03d}.png"
                    save_strip(ep.strip, f"{task} episode {i} ({tag}): {verdict} in {ep.steps} steps",
                               out / "strips" / name)
                bar.update(1)
                bar.set_postfix_str(f"{task} {sum(e.success for e in episodes)}/{len(episodes)} ok")
        finally:
            runner.close()
        wins = sum(e.success for e in episodes)
        lo, hi = wilson_interval(wins, len(episodes))
        tasks[task] = {
            "successes": wins, "episodes": len(episodes), "success_rate": wins / len(episodes),
            "ci95": [lo, hi], "mean_steps": sum(e.steps for e in episodes) / len(episodes),
            "mean_plans": sum(e.plans for e in episodes) / len(episodes),
            "episode_seeds": [e.env_seed for e in episodes], "success_per_episode": [e.success for e in episodes],
        }
        if planner.needs_conditioner:  # every predicted caption and remaining time, per episode and plan
            tasks[task]["predicted"] = [e.predicted for e in episodes]
    bar.close()
    wins = sum(t["successes"] for t in tasks.values())
    total = sum(t["episodes"] for t in tasks.values())
    overall = {"successes": wins, "episodes": total, "success_rate": wins / total,
               "ci95": list(wilson_interval(wins, total))}
    return {"tasks": tasks, "overall": overall}


def results_table(by_way: dict, events: list[str], what: str = "events") -> str:
    """Markdown: success per task (one column per way of choosing events, or per context
    source: ``what``), steps and plans."""
    from wallwm_pretrain.eval.report import markdown_table, rate_cell

    runs = [by_way[e] for e in events]
    several = len(runs) > 1
    head = ["task"] + [f"success [95% CI]{f' ({e} {what})' if several else ''}" for e in events]
    head += [f"mean steps{f' ({e})' if several else ''}" for e in events]
    head += [f"plans/episode{f' ({e})' if several else ''}" for e in events]
    rows = []
    for task in runs[0]["tasks"]:
        ts = [r["tasks"][task] for r in runs]
        rows.append([task] + [rate_cell(t["successes"], t["episodes"]) for t in ts]
                    + [f"{t['mean_steps']:.0f}" for t in ts] + [f"{t['mean_plans']:.1f}" for t in ts])
    rows.append(["all"] + [rate_cell(r["overall"]["successes"], r["overall"]["episodes"]) for r in runs]
                + [""] * (2 * len(runs)))
    return markdown_table(head, rows)



def log_to_mlflow(results: dict, cfg, args: argparse.Namespace, out: Path) -> str:
    from wallwm_pretrain.tracking import MLflowTracker, default_store

    uri, artifacts = (cfg.tracking.uri, None) if cfg.tracking.uri else default_store(args.runs_root or cfg.train.runs_root)
    tracker = MLflowTracker(uri, f"{cfg.tracking.experiment}-eval", f"{cfg.train.run_name}-eval",
                            artifact_location=artifacts, tags={"wallwm.checkpoint": str(args.ckpt)})
    with tracker:
        tracker.log_params({"checkpoint": str(args.ckpt), "mode": cfg.data.mode, "tasks": " ".join(args.tasks),
                            "episodes": args.episodes, "seed": args.seed, "max_steps": args.max_steps,
                            "denoise_steps": args.denoise_steps, "env": args.env, "events": " ".join(args.events),
                            "context": " ".join(args.context),
                            "conditioner": str(args.conditioner or "")})
        metrics = {f"success_rate/{task}": t["success_rate"] for task, t in results["tasks"].items()}
        metrics["success_rate"] = results["overall"]["success_rate"]
        if len(results.get("events", {})) > 1:  # each way of choosing events, side by side
            for events, run in results["events"].items():
                metrics[f"success_rate_{events}_events"] = run["overall"]["success_rate"]
        for context, run in results.get("contexts", {}).items():
            metrics[f"success_rate_{context}_context"] = run["overall"]["success_rate"]
        metrics.update({f"open_loop/{k}": v for k, v in results.get("open_loop", {}).items()})
        tracker.log_metrics(metrics, 0)
        tracker.log_artifact(out / "results.json")
        tracker.log_artifact(out / "results.md")
        for png in sorted((out / "strips").glob("*.png")):
            tracker.log_artifact(png, "strips")
    return tracker.run_id


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worldmodel"]:
        from wallwm_pretrain.eval.worldmodel import main as worldmodel

        return worldmodel(argv[1:])
    args = build_parser().parse_args(argv)
    # megatron-core warns at import about optional GPU-only extensions (apex, TE)
    warnings.filterwarnings("ignore", module="megatron")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from sim.errors import SimError
    from wallwm_pretrain.checkpoint import CheckpointError
    from wallwm_pretrain.client import ServerError
    from wallwm_pretrain.eval.policy import PolicyError

    try:
        results = evaluate(args)
    except (SimError, CheckpointError, PolicyError, ServerError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    print(results["table"])
    if "open_loop" in results:
        ol = results["open_loop"]
        print(f"open-loop on {ol['samples']} held-out samples: action MSE (normalised) {ol['action_mse_normalised']:.4f}, "
              f"MAE {ol['action_mae']:.4f}, remaining-time MAE {ol['remaining_steps_mae']:.1f} steps")
    print(f"results in {results['out']} ({results['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
