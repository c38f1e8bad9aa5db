"""``python -m wallwm_pretrain.infer``: the conditioner (and event mode) or a unified-mode chunk on
one observation.

    python -m wallwm_pretrain.infer --conditioner runs/cond_smoke --shards data/shards/smoke-cond \\
        --key ep000003_L1_002_t00041 --policy runs/smoke
    python -m wallwm_pretrain.infer --conditioner runs/cond_smoke --observation obs.npz --task "pick up the cube"
    python -m wallwm_pretrain.infer --mode unified --context staircase --policy runs/smoke-unified \\
        --shards data/shards/smoke-episodes --anchor 32 --staircase runs/smoke-staircase

Prints (and with ``--out`` writes as JSON) the predicted next event's caption, the control
steps it has left and, with ``--policy`` (an event-mode checkpoint), the actions the towers
plan for that caption, as many as the remaining time says; with ``--staircase`` (a stage-4
checkpoint) also the reasoning trace the frozen small LM decodes from the Staircase latents. ``--save-states`` writes the
caption's aligned text states (``[align_tokens, text_dim]`` float32 ``.npy``): what the
video tower can read in place of the text encoder's.

``--mode unified`` plans one fixed chunk with a unified-mode checkpoint (``--policy``) from the
observation and the history frames before it, with the text context ``--context`` names:
``atomic`` (``--caption``, default: the recorded caption of the event in progress), ``global``
(the task through the checkpoint's conditioner heads) or ``staircase`` (its Staircase latents;
``--staircase`` with the stage-4 checkpoint also prints the trace the small LM decodes from them).
From an episode sample (``build-episodes``) ``--anchor`` picks the observation step; history
frames before the episode's start repeat its first frame, as in training.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m wallwm_pretrain.infer",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n", 2)[2] if __doc__ else None,
        epilog=(
            "observation file (--observation, .npz): 'observation' uint8 [V, H, W, 3] (views in training order, at\n"
            "the conditioner's image size), 'state' float [S] in robot units, optionally 'task' (a string) and\n"
            "'done' (strings: captions of the events finished so far); --task / --done override them. With --mode\n"
            "unified also 'history' uint8 [M, V, H, W, 3] (the frames M K_p ... K_p steps before, oldest first;\n"
            "default: the observation repeated) and 'caption' (the atomic instruction).\n\n"
            "example:\n"
            "  python -m wallwm_pretrain.infer --conditioner runs/cond_smoke --shards data/shards/smoke-cond \\\n"
            "      --key ep000003_L1_002_t00041 --policy runs/smoke --out next.json\n"
            "  python -m wallwm_pretrain.infer --mode unified --context global --policy runs/smoke-unified \\\n"
            "      --shards data/shards/smoke-episodes --anchor 32"
        ),
    )
    p.add_argument("--conditioner", metavar="CKPT",
                   help="a model.kind=conditioner run folder, checkpoint step folder or export")
    p.add_argument("--staircase", metavar="CKPT",
                   help="a model.kind=staircase run: also print the reasoning trace its frozen small LM "
                        "decodes from the Staircase latents of this observation")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--shards", metavar="FOLDER", help="take the observation from a sample of this shard folder "
                     "(conditioner shards: their task and done captions too; event shards: the event's first frame)")
    src.add_argument("--observation", metavar="FILE.npz", help="take the observation from this file (see below)")
    p.add_argument("--key", help="with --shards: the sample key (default: the first sample)")
    p.add_argument("--task", help="the task instruction (overrides the sample's / file's)")
    p.add_argument("--done", nargs="*", metavar="CAPTION", help="captions of the events done so far (overrides)")
    p.add_argument("--policy", metavar="CKPT", help="an event-mode checkpoint: also plan the actions of the predicted "
                   "event (with --mode unified: the unified-mode checkpoint that plans the chunk)")
    p.add_argument("--mode", choices=["event", "unified"], default="event",  # the keys of RUNS
                   help="event (default): the conditioner's next event, planned by an event-mode --policy; unified: "
                        "one fixed chunk of a unified-mode --policy")
    p.add_argument("--context", choices=["atomic", "global", "staircase"], default="atomic",
                   help="--mode unified: the chunk's text context source (default atomic)")
    p.add_argument("--caption", help="--mode unified --context atomic: the atomic instruction (default: the recorded "
                   "caption of the event in progress at the observation)")
    p.add_argument("--anchor", type=int, default=0, help="--mode unified with --shards: the observation's step in the "
                   "sample (default 0)")
    p.add_argument("--denoise-steps", type=int, default=10, help="Euler steps of the policy's plan (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the plan's sampling noise (default 0)")
    p.add_argument("--out", metavar="FILE.json", help="write the prediction (and actions) here")
    p.add_argument("--save-states", metavar="FILE.npy", help="write the aligned text states here")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    return p


def _find_sample(folder: str, key: str | None) -> tuple[dict, dict]:
    """(crude, decoded) of the sample ``key`` of a shard folder (the first one without a key)."""
    from wallwm_pretrain.data.decode import decode_sample
    from wallwm_pretrain.data.index import read_index
    from wallwm_pretrain.data.tarread import read_tar

    for shard in read_index(folder)["shards"]:
        for crude in read_tar(str(Path(folder) / shard["name"])):
            if key is None or crude["__key__"] == key:
                return crude, decode_sample(crude)
    raise ValueError(f"{folder}: no sample {key!r} in its shards" if key else f"{folder}: no samples")


def _sample_from_shards(folder: str, key: str | None) -> dict:
    """observation, state, task, done (and the truth when the sample says it) of one sample."""
    crude, s = _find_sample(folder, key)
    meta = s.get("json") or {}
    if "observation.npy" in s:  # a conditioner sample
        obs = s["observation.npy"]
        state = s["state.npy"]
    elif "frames.npy" in s:  # an event sample: its first frame
        obs, state = s["frames.npy"][0], s["state.npy"]
    else:
        raise ValueError(f"{crude['__url__']}: sample {crude['__key__']} has neither observation.npy nor frames.npy")
    truth = {k: meta[k] for k in ("caption", "remaining") if k in meta}
    if "remaining" not in truth and "length" in meta:
        truth["remaining"] = meta["length"]
    return {"key": crude["__key__"], "observation": obs, "state": state, "task": meta.get("task", ""),
            "done": list(meta.get("done_captions", [])), "truth": truth}


def _sample_from_file(path: str) -> dict:
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read an .npz observation ({exc})") from None
    for name in ("observation", "state"):
        if name not in data.files:
            raise ValueError(f"{path}: missing '{name}' (has {', '.join(data.files) or 'nothing'})")
    task = str(data["task"]) if "task" in data.files else ""
    done = [str(x) for x in data["done"].tolist()] if "done" in data.files else []
    return {"key": path, "observation": data["observation"], "state": data["state"], "task": task, "done": done,
            "truth": {}}


def _window_from_shards(folder: str, key: str | None, anchor: int, steps_back: list[int]) -> dict:
    """Unified mode: the observation at step ``anchor`` of a sample (an episode or an event), its
    history frames (clamped at the sample's start), state, task, events done and the caption of
    the event in progress."""
    crude, s = _find_sample(folder, key)
    if "frames.npy" not in s:
        raise ValueError(f"{crude['__url__']}: sample {crude['__key__']} has no frames.npy (episode or event shards)")
    frames, meta = s["frames.npy"], s.get("json") or {}
    if not 0 <= anchor < len(frames):
        raise ValueError(f"--anchor {anchor}: sample {crude['__key__']} has steps 0..{len(frames) - 1}")
    events = meta.get("events") or [{"caption": meta.get("caption", ""), "start": 0, "end": len(frames)}]
    current = next((e for e in events if e["start"] <= anchor < e["end"]), events[-1])
    return {"key": f"{crude['__key__']}/t{anchor}", "observation": frames[anchor],
            "history": [frames[max(0, anchor - d)] for d in steps_back], "state": s["states.npy"][anchor],
            "task": meta.get("task", ""), "done": [e["caption"] for e in events if e["end"] <= anchor],
            "caption": current["caption"], "truth": {"caption": current["caption"],
                                                     "remaining": int(current["end"]) - anchor}}


def infer_unified(args: argparse.Namespace) -> dict:
    """``--mode unified``: one chunk of a unified-mode checkpoint (the unified-chunks planner)."""
    from wallwm_pretrain.eval.wan_policy import load_policy

    # event- and unified-mode checkpoints share the towers: either plans a chunk
    policy = load_policy(args.policy, device=args.device, denoise_steps=args.denoise_steps, mode="unified")
    steps_back = policy.history_steps()
    if args.shards:
        sample = _window_from_shards(args.shards, args.key, args.anchor, steps_back)
    else:
        sample = _sample_from_file(args.observation)
        with np.load(args.observation, allow_pickle=False) as data:
            history = data["history"] if "history" in data.files else [sample["observation"]] * len(steps_back)
            sample["caption"] = str(data["caption"]) if "caption" in data.files else ""
        sample["history"] = list(history)
    task = args.task if args.task is not None else sample["task"]
    done = list(args.done) if args.done is not None else sample["done"]
    caption = args.caption if args.caption is not None else sample["caption"]
    if args.context == "atomic" and not caption:
        raise ValueError("--context atomic needs an atomic instruction: --caption TEXT (the sample records none)")
    if args.context != "atomic" and not task:
        raise ValueError(f"--context {args.context} reads the task: --task TEXT (the sample records none)")
    obs = np.asarray(sample["observation"], dtype=np.uint8)
    history = [np.asarray(h, dtype=np.uint8) for h in sample["history"]]
    if obs.shape[1] != policy.image_size:
        from sim.imageops import resize_area

        obs, history = resize_area(obs, policy.image_size), [resize_area(h, policy.image_size) for h in history]
    import torch

    from wallwm_pretrain.eval.planners import Scene, Task, UnifiedChunks

    planner = UnifiedChunks(policy, args.context)
    planner.start(Task(task, [("chunk", caption)], done), torch.Generator(device=policy.device).manual_seed(args.seed))
    plan = planner.next(Scene(obs, obs, np.asarray(sample["state"], dtype=np.float32), 0, history))
    out = {"sample": sample["key"], "mode": "unified", "context": args.context, "task": task, "done": done,
           "truth": sample["truth"], "actions": plan.actions.tolist(), "planned_steps": plan.planned,
           "remaining_steps": plan.remaining}
    if args.context == "atomic":
        out["caption"] = caption
    if args.staircase:
        out["reasoning"] = _trace(args.staircase, np.asarray(sample["observation"], dtype=np.uint8), task, done,
                                  args.device)
    return out


def _trace(ckpt: str, obs: np.ndarray, task: str, done: list[str], device: str) -> str:
    """The reasoning trace a stage-4 checkpoint's small LM decodes from this observation's latents."""
    from wallwm_pretrain.export import load_model
    from wallwm_pretrain.model.conditioner.prompt import build_prompt

    model, cfg = load_model(ckpt, device)
    if cfg.model.kind != "staircase":  # the flag takes one model kind: a check of the input, not a dispatch
        raise ValueError(f"--staircase needs a model.kind=staircase checkpoint, {ckpt} is model.kind={cfg.model.kind}")
    prompt = build_prompt(task, done, cfg.model.conditioner.max_done)
    return model.decode_traces(obs[None], [prompt])[0]


def infer(args: argparse.Namespace) -> dict:
    """``--mode event``: the conditioner's next event and, with ``--policy``, the towers' plan of it."""
    import torch

    from sim.imageops import resize_area
    from wallwm_pretrain.eval.conditioner import ConditionerPlanner
    from wallwm_pretrain.eval.planners import PredictedEvents, Scene, Task
    from wallwm_pretrain.eval.wan_policy import load_policy

    sample = _sample_from_shards(args.shards, args.key) if args.shards else _sample_from_file(args.observation)
    task = args.task if args.task is not None else sample["task"]
    done = list(args.done) if args.done is not None else sample["done"]
    obs = np.asarray(sample["observation"], dtype=np.uint8)
    out = {"sample": sample["key"], "task": task, "done": done, "truth": sample["truth"]}
    if args.staircase:
        out["reasoning"] = _trace(args.staircase, obs, task, done, args.device)
    if not args.conditioner:
        return out
    conditioner = ConditionerPlanner.load(args.conditioner, device=args.device)
    state = np.asarray(sample["state"], dtype=np.float32)
    if args.policy:
        # the predicted-events planner: the conditioner names the event, the towers plan it
        policy = load_policy(args.policy, device=args.device, denoise_steps=args.denoise_steps, mode="event")
        planner = PredictedEvents(policy, conditioner=conditioner)
        planner.start(Task(task, done=done), torch.Generator(device=policy.device).manual_seed(args.seed))
        frame = obs if obs.shape[1] == policy.image_size else resize_area(obs, policy.image_size)
        plan = planner.next(Scene(frame, obs, state, 0))
        pred = planner.last
    else:
        pred = conditioner.next_event(obs, state, task, done)
    out.update(next_event=pred.caption, remaining_steps=pred.remaining_steps)
    if args.save_states:
        np.save(args.save_states, pred.text_states.numpy().astype(np.float32))
        out["text_states"] = {"file": args.save_states, "shape": list(pred.text_states.shape)}
    if args.policy:
        out["actions"] = plan.actions.tolist()
        out["planned_steps"] = plan.planned
    return out


def _event_flags(args: argparse.Namespace) -> str | None:
    if args.caption is not None or args.anchor or args.context != "atomic":
        return "--caption, --anchor and --context go with --mode unified"
    if not (args.conditioner or args.staircase):
        return "give --conditioner CKPT (next event, remaining time) and/or --staircase CKPT (trace)"
    if (args.policy or args.save_states) and not args.conditioner:
        return "--policy and --save-states need the --conditioner's prediction: give --conditioner"
    return None


def _unified_flags(args: argparse.Namespace) -> str | None:
    if not args.policy:
        return "--mode unified needs --policy CKPT (a unified-mode checkpoint)"
    if args.conditioner:
        return "--mode unified reads its context from --context, not from --conditioner"
    return None


# --mode: (its flag check, what it runs): the predicted-events planner or the unified-chunks one
RUNS = {"event": (_event_flags, infer), "unified": (_unified_flags, infer_unified)}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", module="megatron")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if args.key and not args.shards:
        print("error: --key goes with --shards", file=sys.stderr)
        return 2
    check, run = RUNS[args.mode]
    problem = check(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from wallwm_pretrain.checkpoint import CheckpointError
    from wallwm_pretrain.data.errors import ShardError
    from wallwm_pretrain.eval.policy import PolicyError

    try:
        out = run(args)
    except (CheckpointError, PolicyError, ShardError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if "context" in out:
        print(f"context:         {out['context']}" + (f" {out['caption']!r}" if "caption" in out else f" (task {out['task']!r})"))
        print(f"remaining steps: {out['remaining_steps']:.1f} (event in progress)")
    if "next_event" in out:
        print(f"next event:      {out['next_event']!r}")
        print(f"remaining steps: {out['remaining_steps']:.1f}")
    if "reasoning" in out:
        print(f"reasoning trace: {out['reasoning']!r}")
    if out["truth"]:
        print(f"recorded:        {out['truth'].get('caption')!r}, {out['truth'].get('remaining')} steps")
    if "actions" in out:
        print(f"actions:         {len(out['actions'])} of {out['planned_steps']} planned steps")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
