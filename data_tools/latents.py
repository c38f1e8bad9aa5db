"""VAE latents of every event's frames, per view (``encode-latents``).

The frozen Wan VAE (diffusers ``AutoencoderKLWan``) is causal in time with temporal compression
r (4 for Wan2.1 and Wan2.2): the first frame becomes latent frame 0 on its own, and every
following run of r frames one more latent frame, so 1 + r*k frames -> 1 + k latent frames.

**Cut rule.** An event of T frames keeps its first 1 + r*floor((T - 1) / r) frames: the largest
1 + r*k that fits, dropping at most r - 1 trailing frames and padding nothing (padding would
invent frames the robot never showed). That gives N = 1 + floor((T - 1) / r) = ceil(T / r)
latent frames, exactly as many as the pixel path keeps (``frames[:, ::r]``), and latent frame j
ends at frame r*j, the frame the pixel path shows for it.

**Actions.** Actions are stored one per frame (``actions.npy`` [T, A]). Latent frame j goes with
action steps [r*j, r*j + r): K_p = r actions per latent frame, i.e. ``model.frame_stride`` must
equal r. The actions are not cut: the last group's steps past T are padding in the batch, as on
the pixel path.

**Values.** Frames uint8 -> [-1, 1], one clip per view [1, 3, T', H, W]; the latent is the
posterior's mean (``latent_dist.mode()``, deterministic), normalised with the VAE's own
``latents_mean``/``latents_std`` as Wan's pipelines do ((mu - mean) / std), stored as float16
``latents.npy`` [N, V, Z, h, w] (latent frame, view, channel, height, width), h = H / s and
w = W / s for the spatial compression s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cut import npy_bytes
from .errors import DataToolsError
from .shardread import npy

MEMBER = "latents.npy"
LAYOUT = "[N, V, Z, h, w]: latent frame, view, channel, height, width"
FRAMES_MEMBER = "frames.npy"

_MODELS: dict = {}  # (folder, device) -> VAE, one per process


def compression(config: dict) -> tuple[int, int]:
    """(temporal, spatial) compression of a Wan VAE config, from its architecture.

    Counted from ``temperal_downsample`` and ``dim_mult`` (and Wan2.2's ``patch_size``) rather
    than taken from ``scale_factor_*``: those keys fall back to defaults (4, 8) when a config
    leaves them out, whatever the architecture.
    """
    temporal = 2 ** sum(bool(x) for x in config.get("temperal_downsample", [False, True, True]))
    spatial = 2 ** (len(config.get("dim_mult", [1, 2, 4, 4])) - 1) * int(config.get("patch_size") or 1)
    return temporal, spatial


def kept_frames(t: int, temporal: int) -> int:
    """Frames of an event of ``t`` frames that the VAE sees: the largest 1 + r*k <= t.

    The causal VAE maps 1 + r*k frames to 1 + k latents; the trailing ``(t - 1) % r`` frames
    are cut, never padded, so every latent stands for recorded frames only.

    Raises:
        ValueError: ``t < 1`` or ``temporal < 1``.
    """
    if t < 1 or temporal < 1:
        raise ValueError(f"kept_frames needs t >= 1 frames and a temporal compression >= 1, got t={t}, "
                         f"temporal={temporal}")
    return 1 + temporal * ((t - 1) // temporal)


def latent_frames(t: int, temporal: int) -> int:
    """Latent frames of an event of ``t`` frames: 1 + k for the kept 1 + r*k frames."""
    return 1 + (t - 1) // temporal


def _npy(data: bytes, where: str) -> np.ndarray:
    try:
        return npy(data)
    except (ValueError, OSError) as exc:
        raise DataToolsError(f"{where}: cannot read ({exc})") from None


@dataclass(frozen=True)
class EncodeLatents:
    """The ``compute`` of ``augment_shards`` for latents (picklable: worker processes)."""
    vae: str
    device: str = "cpu"
    batch_size: int = 1
    threads: int = 0  # torch CPU threads per worker process (0: torch's default)

    def model(self):
        key = (self.vae, self.device)
        if key not in _MODELS:
            from .frozen import load_vae, use_threads
            use_threads(self.threads)
            _MODELS[key] = load_vae(Path(self.vae), self.device)
        return _MODELS[key]

    def __call__(self, samples, shard: Path) -> list[dict[str, bytes]]:
        import torch

        vae = self.model()
        cfg = vae.config
        temporal, spatial = compression(cfg)
        mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        std = torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)
        clips = []  # (sample index, view, uint8 [T', H, W, 3])
        for i, (key, members) in enumerate(samples):
            where = f"{shard}: sample {key}"
            if FRAMES_MEMBER not in members:
                raise DataToolsError(f"{where} has no {FRAMES_MEMBER}; encode-latents needs shards "
                                     "built with frames (python -m data_tools build-shards)")
            frames = _npy(members[FRAMES_MEMBER], f"{where}.{FRAMES_MEMBER}")
            if frames.ndim != 5 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
                raise DataToolsError(f"{where}.{FRAMES_MEMBER}: expected uint8 [T, V, H, W, 3] "
                                     f"with T >= 1, found {frames.dtype} {list(frames.shape)}")
            h, w = frames.shape[2:4]
            if h % spatial or w % spatial:
                raise DataToolsError(f"{where}: frames of {h}x{w} are not divisible by the VAE's "
                                     f"spatial compression {spatial} ({self.vae}/config.json); "
                                     "rebuild the shards with another --image-size")
            keep = kept_frames(len(frames), temporal)
            clips += [(i, v, frames[:keep, v]) for v in range(frames.shape[1])]
        out: dict[tuple[int, int], np.ndarray] = {}
        # Batches of clips of equal length, in order (the causal VAE needs equal lengths).
        start = 0
        while start < len(clips):
            stop = start + 1
            while (stop < len(clips) and stop - start < self.batch_size
                   and clips[stop][2].shape == clips[start][2].shape):
                stop += 1
            batch = np.stack([c[2] for c in clips[start:stop]])  # [B, T', H, W, 3]
            x = torch.from_numpy(batch).to(self.device).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
            with torch.no_grad():
                mu = vae.encode(x).latent_dist.mode().float().cpu()
            z = ((mu - mean) / std).to(torch.float16).numpy()  # [B, Z, N, h, w]
            for (i, v, clip), lat in zip(clips[start:stop], z):
                n = latent_frames(len(clip), temporal)
                if lat.shape[1] != n or lat.shape[2:] != (clip.shape[1] // spatial, clip.shape[2] // spatial):
                    raise DataToolsError(f"{self.vae}/config.json: the VAE maps {list(clip.shape[:3])} "
                                         f"frames to latents {list(lat.shape)}, not the {n} x "
                                         f"{spatial}x-smaller frames its config implies")
                out[(i, v)] = lat.transpose(1, 0, 2, 3)  # [N, Z, h, w]
            start = stop
        result = []
        for i, (key, members) in enumerate(samples):
            views = sorted(v for (j, v) in out if j == i)
            result.append({MEMBER: npy_bytes(np.stack([out[(i, v)] for v in views], axis=1))})
        return result


def latents_spec(vae_folder: Path, config: dict, fingerprint: str) -> dict:
    """What ``index.json["latents"]`` records about the latent member."""
    temporal, spatial = compression(config)
    return {
        "member": MEMBER,
        "layout": LAYOUT,
        "dtype": "float16",
        "source": str(Path(vae_folder).resolve()),
        "model_class": config.get("_class_name"),
        "fingerprint": fingerprint,
        "z_dim": int(config["z_dim"]),
        "temporal_compression": temporal,
        "spatial_compression": spatial,
        "actions_per_latent_frame": temporal,
        "frames_rule": f"an event of T frames keeps its first 1 + {temporal}*floor((T-1)/{temporal}) "
                       f"frames -> N = 1 + floor((T-1)/{temporal}) latent frames; latent frame j "
                       f"goes with action steps [{temporal}j, {temporal}j + {temporal})",
        "normalisation": "(posterior mean - latents_mean) / latents_std",
        "latents_mean": [float(x) for x in config["latents_mean"]],
        "latents_std": [float(x) for x in config["latents_std"]],
        "pixel_range": "uint8 frames / 127.5 - 1",
    }


def encode_latents(shards: Path, vae: Path, device: str = "cpu", batch_size: int = 1,
                   workers: int = 1, progress: bool = True, force: bool = False,
                   rank: int = 0, world: int = 1) -> dict:
    """Add ``latents.npy`` to every sample of the shard folder ``shards`` (see module doc);
    with ``world > 1`` to the shards of this ``rank`` only (``ranks.py``)."""
    from .augment import augment_shards
    from .frozen import check_device, check_vae, fingerprint

    if batch_size < 1 or workers < 1:
        raise DataToolsError(f"--batch-size ({batch_size}) and --workers ({workers}) must be positive")
    config = check_vae(vae)
    check_device(device)
    spec = latents_spec(vae, config, fingerprint(vae))
    from .frozen import threads_per_worker

    compute = EncodeLatents(str(Path(vae).resolve()), device, batch_size,
                            threads_per_worker(device, workers))
    return augment_shards(shards, "latents", spec, (MEMBER,), compute, workers, progress, force,
                          rank=rank, world=world)
