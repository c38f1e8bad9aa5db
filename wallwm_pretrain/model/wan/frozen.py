"""The frozen Wan VAE and UMT5 text encoder at inference, loaded once per process.

Both in their own libraries' folders (``AutoencoderKLWan`` of diffusers, ``UMT5EncoderModel`` and
its tokenizer of transformers), as ``convert make-tiny`` writes them and as the shards record them
(``index.json``: ``latents.source``, ``text_states.source`` / ``tokenizer``). The rules are those the
shards were made with (``data_tools`` ``encode-latents`` / ``embed-captions``, which this package
may not import) and Wan's pipelines use:

* frames uint8 -> ``x / 127.5 - 1`` -> the posterior's mean (``latent_dist.mode()``) ->
  ``(mu - latents_mean) / latents_std``; decoding inverts the normalisation;
* a caption -> the tokenizer (end-of-sequence token, truncated at ``max_length``) -> the
  encoder's ``last_hidden_state`` at the real positions (the Wan path pads them, ``text.py``).

Loaded models are kept per process (:func:`frozen_wan`), and the states of a caption once
computed are kept too (a policy asks for the same few captions at every plan).
"""

from __future__ import annotations

from pathlib import Path

import torch

_LOADED: dict = {}  # (vae, text_encoder, tokenizer, device) -> FrozenWan


class FrozenWan:
    """The frozen VAE and text encoder of a Wan-tower model.

    Args:
        vae: an ``AutoencoderKLWan`` folder (or None: no frames are encoded or decoded).
        text_encoder: a ``UMT5EncoderModel`` folder (or None: no captions are encoded).
        tokenizer: its tokenizer folder (default: ``text_encoder/../tokenizer`` as in Wan's layout,
            else the encoder's folder).
        max_length: the tokenizer's truncation (the shards' ``text_states.max_length``).
    """

    def __init__(self, vae: str | Path | None, text_encoder: str | Path | None, tokenizer: str | Path | None = None,
                 device: str | torch.device = "cpu", max_length: int = 512) -> None:
        self.device = torch.device(device)
        self.max_length = int(max_length)
        self.vae = self.tokenizer = self.text_encoder = None
        self._states: dict[str, torch.Tensor] = {}
        if vae is not None:
            from diffusers import AutoencoderKLWan

            self.vae = _load(AutoencoderKLWan, vae, "the VAE", torch_dtype=torch.float32).to(self.device).eval().requires_grad_(False)
            cfg = self.vae.config
            self.mean = torch.tensor(cfg.latents_mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1, 1)
            self.std = torch.tensor(cfg.latents_std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1, 1)
        if text_encoder is not None:
            from transformers import AutoTokenizer, UMT5EncoderModel

            folder = Path(text_encoder)
            tok = Path(tokenizer) if tokenizer else (folder.parent / "tokenizer" if (folder.parent / "tokenizer").is_dir()
                                                      else folder)
            self.tokenizer = _load(AutoTokenizer, tok, "the tokenizer")
            self.text_encoder = _load(UMT5EncoderModel, folder, "the text encoder", dtype=torch.float32).to(self.device).eval()
            self.text_encoder.requires_grad_(False)

    @property
    def temporal(self) -> int:
        return int(self.vae.config.scale_factor_temporal)

    @property
    def spatial(self) -> int:
        return int(self.vae.config.scale_factor_spatial)

    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, T, H, W, 3]`` clips (T = 1 + r k) -> normalised latents ``[B, Z, 1 + k, h, w]``."""
        x = frames.to(self.device).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
        mu = self.vae.encode(x).latent_dist.mode().float()
        return (mu - self.mean) / self.std

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents ``[B, Z, F, h, w]`` -> frames ``[B, 3, T, H, W]`` in [-1, 1] (float)."""
        z = latents.to(self.device).float() * self.std + self.mean
        return self.vae.decode(z, return_dict=False)[0].float()

    @staticmethod
    def to_uint8(video: torch.Tensor) -> torch.Tensor:
        """Decoded frames ``[B, 3, T, H, W]`` in [-1, 1] -> uint8 ``[B, T, H, W, 3]`` (rounded)."""
        x = ((video.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        return x.permute(0, 2, 3, 4, 1)

    @torch.no_grad()
    def text_states(self, captions: list[str]) -> list[torch.Tensor]:
        """float32 ``[L_i, D]`` per caption (real positions only); each distinct caption is encoded
        once per process."""
        missing = sorted({c for c in captions if c not in self._states})
        if missing:
            batch = self.tokenizer(missing, padding="longest", truncation=True, max_length=self.max_length,
                                   add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
            ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
            states = self.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state.float()
            for caption, s, n in zip(missing, states, mask.sum(dim=1).tolist()):
                self._states[caption] = s[:n].clone()
        return [self._states[c] for c in captions]

    def text_batch(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """States ``[B, L, D]`` padded to the longest and their real positions ``[B, L]``."""
        states = self.text_states(captions)
        longest = max(len(s) for s in states)
        out = states[0].new_zeros(len(states), longest, states[0].shape[1])
        for i, s in enumerate(states):
            out[i, : len(s)] = s
        lengths = torch.tensor([len(s) for s in states], device=out.device)
        return out, torch.arange(longest, device=out.device)[None] < lengths[:, None]


def _load(cls, folder: str | Path, what: str, **kwargs):
    try:
        return cls.from_pretrained(str(folder), local_files_only=True, **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{folder}: cannot load {what} ({cls.__name__}): {exc}") from None


def frozen_wan(vae: str | Path | None, text_encoder: str | Path | None, tokenizer: str | Path | None = None,
               device: str | torch.device = "cpu", max_length: int = 512) -> FrozenWan:
    """The process's :class:`FrozenWan` of these folders (loaded on first use, then shared)."""
    key = tuple(str(Path(p).resolve()) if p else "" for p in (vae, text_encoder, tokenizer)) + (str(device), max_length)
    if key not in _LOADED:
        _LOADED[key] = FrozenWan(vae, text_encoder, tokenizer, device, max_length)
    return _LOADED[key]
