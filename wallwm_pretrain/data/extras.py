"""The frozen-model members of the shards: VAE latents and text-encoder states.

``python -m data_tools encode-latents`` / ``embed-captions`` add them to finished shards and
record them in index.json (``latents``, ``text_states``, each with ``complete``; see
data_tools/README.md). Here the loader decides, once per run, what it reads:

* latents only when ``model.video_input=latents``; then the index must record complete latents
  whose temporal compression equals ``model.frame_stride`` (K_p: latent frame j goes with
  control steps [j*K, j*K + K)), or the run stops at start with one line naming the folder;
* caption states whenever the index records them complete, with the empty string's states
  (``empty_text_states.npy`` beside index.json) that a dropped caption becomes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from wallwm_pretrain.config import ConfigError
from wallwm_pretrain.data.errors import InputError, ShardError
from wallwm_pretrain.data.index import INDEX_FILE
from wallwm_pretrain.data.npy import load_npy
from wallwm_pretrain.data.source import file_url, read_file


@dataclass(frozen=True)
class Extras:
    """What cooking reads besides the pixel members."""

    latent_stride: int = 0
    """> 0: read ``latents.npy`` (control steps per latent frame; crops start on multiples)."""
    empty_states: Optional[np.ndarray] = None
    """float16 [L_0, D]: read the ``*_states.npy`` members; a dropped caption becomes these."""


def check_video_input(folder: str, index: dict, video_input: str, frame_stride: int) -> None:
    """ConfigError (one line, naming the folder) unless the shards can feed ``video_input``."""
    if video_input != "latents":
        return
    where = file_url(folder, INDEX_FILE)
    spec = index.get("latents")
    if not isinstance(spec, dict) or not spec.get("complete"):
        state = "records latents for only some shards" if isinstance(spec, dict) else "records no VAE latents"
        raise ConfigError(
            f"model.video_input=latents but {where} {state}: run `python -m data_tools "
            f"encode-latents --shards {folder} --vae VAE_DIR` or set model.video_input=pixels"
        )
    if spec.get("temporal_compression") != frame_stride:
        raise ConfigError(
            f"model.video_input=latents needs model.frame_stride = the VAE's temporal compression: "
            f"{where} records {spec.get('temporal_compression')!r}, model.frame_stride={frame_stride}"
        )


def load_extras(folder: str, index: dict, video_input: str, frame_stride: int) -> Extras:
    check_video_input(folder, index, video_input, frame_stride)
    empty = None
    spec = index.get("text_states")
    if isinstance(spec, dict) and spec.get("complete"):
        name = str((spec.get("empty") or {}).get("file", "empty_text_states.npy"))
        path = file_url(folder, name)
        try:
            empty = load_npy(read_file(folder, name))
        except FileNotFoundError:
            raise ShardError(f"{path} not found: {file_url(folder, INDEX_FILE)} records text states; "
                             "re-run `python -m data_tools embed-captions`") from None
        except (OSError, InputError) as exc:
            raise ShardError(f"{path}: cannot read ({exc})") from None
        if empty.dtype != np.float16 or empty.ndim != 2:
            raise ShardError(f"{path}: expected float16 [L, D], found {empty.dtype} {list(empty.shape)}")
    return Extras(frame_stride if video_input == "latents" else 0, empty)
