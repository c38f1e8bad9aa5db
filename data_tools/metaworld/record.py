"""Record Meta-World expert episodes as a LeRobot v3.0 dataset with events.jsonl.

Per step: render the cameras, ask the expert for an action, label the step with the expert's
phase, add optional Gaussian noise, step. An episode ends ``steps_after_success`` steps after
the environment first reports success (so the video shows the finished state) or after
``max_steps``; episodes that never succeed are counted and left out unless ``keep_failures``.

Every random choice of an episode (layout, action noise, caption wording) comes from
``SeedSequence([seed, crc32(task), index])``, so an episode depends only on the seed, its task
and its index within the task: adding tasks or episodes does not change the others, and the
same arguments give the same files. Frames and actions are aligned as in LeRobot: frame t is
the scene before action t is applied.
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sim.metaworld.env import ACTION_NAMES, FPS, STATE_KINDS, TaskEnv
from sim.metaworld.gl import check_rendering
from sim.metaworld.heap import reproducible_heap
from sim.metaworld.render import CameraRig
from sim.metaworld.tasks import get_spec

from ..errors import DataToolsError
from ..events import EVENTS_FILE, Event, write_events
from ..lerobot import LeRobotV3Writer
from .segment import episode_events, primitive_sequence

RECORDING_FILE = "metaworld.json"  # provenance beside events.jsonl: seeds, success, versions


class RecordingError(DataToolsError):
    """Recording one task or episode failed; the message names which."""


@dataclass
class RecordConfig:
    tasks: list[str]
    episodes_per_task: int
    seed: int
    image_size: int = 64
    cameras: list[str] = field(default_factory=lambda: ["corner", "gripperPOV"])
    action_noise: float = 0.0
    max_steps: int = 200
    steps_after_success: int = 10
    keep_failures: bool = False
    min_event_steps: int = 4
    state: str = "proprio"
    antialias: bool = False
    vcodec: str = "h264"
    frames_per_file: int = 100_000

    def check(self) -> None:
        for task in self.tasks:
            try:
                get_spec(task)
            except KeyError as exc:
                raise RecordingError(exc.args[0]) from None
        if len(set(self.tasks)) != len(self.tasks):
            raise RecordingError(f"a task is listed twice in {self.tasks}")
        if len(set(self.cameras)) != len(self.cameras) or not self.cameras:
            raise RecordingError(f"cameras must be distinct and at least one: {self.cameras}")
        if self.image_size < 16 or self.image_size % 2:
            # H.264 with yuv420p needs even sizes; below 16 px nothing is recognisable.
            raise RecordingError(f"image size {self.image_size} must be even and at least 16")
        if self.state not in STATE_KINDS:
            raise RecordingError(f"state {self.state!r} is not one of {', '.join(STATE_KINDS)}")


@dataclass
class Rollout:
    states: np.ndarray                # float32 [T, S]
    actions: np.ndarray               # float32 [T, 4], as executed (noise added, clipped)
    frames: dict[str, np.ndarray]     # camera -> uint8 [T, H, W, 3]
    labels: list[str]                 # expert phase per step
    success_step: int | None          # first step after which the env reported success

    @property
    def success(self) -> bool:
        return self.success_step is not None


def episode_streams(seed: int, task: str, index: int) -> tuple[int, np.random.Generator,
                                                                 np.random.Generator]:
    """(env seed, action-noise generator, caption generator) of one episode."""
    ss = np.random.SeedSequence([seed, zlib.crc32(task.encode()), index])
    env_seed = int(ss.generate_state(1)[0])
    noise, captions = (np.random.default_rng(s) for s in ss.spawn(2))
    return env_seed, noise, captions


def rollout(tenv: TaskEnv, rig: CameraRig, cfg: RecordConfig, env_seed: int,
            noise_rng: np.random.Generator) -> Rollout:
    spec = get_spec(tenv.task)
    to_state = STATE_KINDS[cfg.state][1]
    obs = tenv.reset(env_seed)
    states, actions, labels = [], [], []
    frames: dict[str, list[np.ndarray]] = {c: [] for c in rig.cameras}
    success_step = None
    for t in range(cfg.max_steps):
        for cam, img in rig.render(tenv.data).items():
            frames[cam].append(img)
        expert = tenv.expert_action(obs)
        labels.append(spec.phase(obs, expert))
        # Drawn every step whatever the noise level, so the noise sequence of an episode does
        # not depend on how long it runs or on the level.
        draw = noise_rng.standard_normal(4)
        action = np.clip(expert + cfg.action_noise * draw, -1.0, 1.0).astype(np.float32)
        states.append(to_state(obs))
        actions.append(action)
        obs, info = tenv.step(action)
        if success_step is None and info.get("success", 0.0) >= 1.0:
            success_step = t
        if success_step is not None and t >= success_step + cfg.steps_after_success:
            break
    return Rollout(np.stack(states), np.stack(actions),
                   {c: np.stack(v) for c, v in frames.items()}, labels, success_step)


def _versions() -> dict:
    from importlib.metadata import version

    return {p: version(p) for p in ("metaworld", "mujoco")}


class _Recorder:
    """Accumulates kept episodes: dataset rows and videos, events, provenance, counts."""

    def __init__(self, out: Path, cfg: RecordConfig, progress: bool):
        self.out, self.cfg = Path(out), cfg
        self.keys = {c: f"observation.images.{c}" for c in cfg.cameras}
        self.writer = LeRobotV3Writer(out, FPS, STATE_KINDS[cfg.state][0], ACTION_NAMES,
                                      list(self.keys.values()), cfg.image_size, cfg.image_size,
                                      vcodec=cfg.vcodec, robot_type="sawyer",
                                      frames_per_file=cfg.frames_per_file)
        self.events: list[Event] = []
        self.episodes: list[dict] = []
        self.per_task: dict[str, dict] = {}
        self.bar = tqdm(total=len(cfg.tasks) * cfg.episodes_per_task, desc="metaworld episodes",
                        unit="ep", disable=not progress)

    def record_task(self, task: str) -> None:
        cfg, spec = self.cfg, get_spec(task)
        counts = self.per_task[task] = {"attempted": 0, "successful": 0, "kept": 0, "steps": 0}
        try:
            tenv = TaskEnv(task, cfg.max_steps)
            tenv.reset(0)  # camera poses for the upside-down check need a reset scene
            rig = CameraRig(tenv.model, tenv.data, cfg.cameras, cfg.image_size, cfg.antialias)
        except ValueError as exc:
            raise RecordingError(f"{task}: {exc}") from exc
        try:
            for i in range(cfg.episodes_per_task):
                env_seed, noise_rng, caption_rng = episode_streams(cfg.seed, task, i)
                try:
                    r = rollout(tenv, rig, cfg, env_seed, noise_rng)
                except Exception as exc:
                    raise RecordingError(f"{task} episode {i} (env seed {env_seed}): "
                                         f"{type(exc).__name__}: {exc}") from exc
                counts["attempted"] += 1
                counts["successful"] += int(r.success)
                self.bar.update(1)
                self.bar.set_postfix_str(f"{task} {counts['successful']}/{counts['attempted']} ok")
                if r.success or cfg.keep_failures:
                    self._keep(spec, i, env_seed, r, caption_rng)
                    counts["kept"] += 1
                    counts["steps"] += len(r.actions)
        finally:
            rig.close()
            tenv.close()

    def _keep(self, spec, i: int, env_seed: int, r: Rollout, caption_rng) -> None:
        ep = len(self.episodes)
        try:
            caption, evs = episode_events(ep, spec, r.labels, caption_rng, self.cfg.min_event_steps)
        except ValueError as exc:
            raise RecordingError(f"{spec.name} episode {i}: {exc}") from exc
        self.writer.add_episode(r.states, r.actions,
                                {self.keys[c]: r.frames[c] for c in self.cfg.cameras}, caption)
        self.events.extend(evs)
        self.episodes.append({
            "episode_index": ep, "env_name": spec.name, "task_episode": i, "env_seed": env_seed,
            "success": r.success, "success_step": r.success_step, "length": len(r.actions),
            "primitives": primitive_sequence(r.labels, self.cfg.min_event_steps)})

    def finish(self) -> dict:
        self.bar.close()
        if not self.episodes:
            raise RecordingError("no expert episode succeeded within --max-steps "
                                 f"({self.cfg.max_steps}); nothing to write (see --keep-failures)")
        info = self.writer.finish()
        write_events(self.out / EVENTS_FILE, self.events)
        meta = {"source": "metaworld", "versions": _versions(), "fps": FPS,
                "config": dict(vars(self.cfg)), "state_names": STATE_KINDS[self.cfg.state][0],
                "action_names": ACTION_NAMES, "per_task": self.per_task, "episodes": self.episodes}
        (self.out / RECORDING_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        return info


def record_metaworld(out: Path, cfg: RecordConfig, progress: bool = True) -> dict:
    """Record cfg's episodes into ``out`` (which must be empty or new); returns a summary."""
    cfg.check()
    started = time.perf_counter()
    with reproducible_heap():
        backend = check_rendering()
        rec = _Recorder(out, cfg, progress)
        for task in cfg.tasks:
            rec.record_task(task)
        info = rec.finish()
    return {"episodes": len(rec.episodes), "frames": info["total_frames"],
            "events": len(rec.events), "per_task": rec.per_task, "gl_backend": backend,
            "seconds": time.perf_counter() - started}
