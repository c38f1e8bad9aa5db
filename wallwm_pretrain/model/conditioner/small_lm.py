"""The frozen small LM of Staircase decoding: it reads the K_c latents as a soft prefix and
reconstructs the reasoning trace from them.

* :class:`FrozenSmallLM`: a transformers causal LM (``AutoModelForCausalLM``, e.g. ``Qwen3ForCausalLM``;
  ``small_lm/`` of ``make-tiny``) with its tokenizer, loaded from a local folder and frozen like
  the VLM (``eval()``, ``requires_grad_(False)``) and held as a plain object, so its weights never
  enter the owner's ``state_dict`` or optimizer. Gradients still flow through it to the prefix:
  its inputs, not its weights, carry them.
* :class:`PrefixProjector`: latents z [B, K_c, D_vlm] -> soft prefix [B, K_c * m, D_lm]
  (LayerNorm + linear; m = ``prefix_per_latent``).
* :meth:`FrozenSmallLM.cot_loss`: teacher forcing on the trace r after the prefix,
  ``L_CoT = -sum_m log P(r_m | z, r_<m)``, averaged over the real trace tokens (the end token
  included; padding never counted).
* :meth:`FrozenSmallLM.decode`: greedy decoding of a trace from the prefix (transformers'
  ``generate`` with ``inputs_embeds``, the LM's own KV cache).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .errors import ConditionerError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def check_small_lm_folder(folder: str | Path) -> dict:
    """The parsed ``config.json`` of a causal-LM folder with weights and a tokenizer; raises
    :class:`ConditionerError` naming the folder or file otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConditionerError(f"{folder}: no such small-LM folder (model.staircase.small_lm)")
    cfg_path = folder / "config.json"
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as err:
        raise ConditionerError(f"{cfg_path}: missing or not readable JSON ({err})") from err
    archs = config.get("architectures") or []
    if not any(str(a).endswith("ForCausalLM") for a in archs):
        raise ConditionerError(f"{cfg_path}: architectures {archs} name no causal LM "
                               f"(a transformers *ForCausalLM class)")
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise ConditionerError(f"{folder}: no weights ({' or '.join(WEIGHT_FILES)})")
    if not (folder / "tokenizer_config.json").is_file():
        raise ConditionerError(f"{folder / 'tokenizer_config.json'}: missing; the small LM's tokenizer")
    return config


class FrozenSmallLM:
    """A frozen causal LM with its tokenizer; see the module docstring. Build it with :meth:`load`."""

    def __init__(self, folder: Path, model, tokenizer):
        self._folder = folder
        self._model = model
        self._tokenizer = tokenizer
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ConditionerError(f"{folder}: the small LM's tokenizer has no eos token")
        self._eos_id = eos
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32) -> FrozenSmallLM:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = Path(folder)
        check_small_lm_folder(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
        model = model.to(device).eval().requires_grad_(False)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        return cls(folder, model, tokenizer)

    def num_parameters(self) -> int:
        """Elements of the frozen weights (shared tensors counted once)."""
        return sum(p.numel() for p in self._model.parameters())

    @property
    def hidden_size(self) -> int:
        """D_lm: the width of the LM's input embeddings, the prefix's last dim."""
        return self._model.get_input_embeddings().embedding_dim

    @property
    def eos_token_id(self) -> int:
        return self._eos_id

    @property
    def device(self) -> torch.device:
        return self._model.device

    def to(self, device: str | torch.device) -> FrozenSmallLM:
        if torch.device(device) != self._model.device:
            self._model.to(device)
        return self

    def tokenize(self, traces: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Traces as plain tokens + the eos token, cut to ``max_length`` (eos kept), right-padded.

        Returns ids int64 [B, max_length] and mask bool [B, max_length] (True on real tokens)."""
        if max_length < 1:
            raise ConditionerError(f"tokenize: max_length must be >= 1, got {max_length}")
        rows = self._tokenizer(list(traces), add_special_tokens=False)["input_ids"] if traces else []
        ids = torch.full((len(rows), max_length), self._pad_id, dtype=torch.int64)
        mask = torch.zeros((len(rows), max_length), dtype=torch.bool)
        for i, row in enumerate(rows):
            row = list(row[:max_length - 1]) + [self._eos_id]
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = True
        return ids, mask

    def cot_loss(self, prefix: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
                 denominator: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of -log P(r_m | prefix, r_<m) over the real trace tokens (``mask``), or their sum
        divided by ``denominator`` (the global batch's token count, in training).

        ``prefix`` [B, P, D_lm]; ``ids``/``mask`` [B, M] from :meth:`tokenize`. The logits at
        position P - 1 + m predict r_m. Right padding after a trace cannot reach its real tokens
        (causal LM), and its positions are left out of the mean."""
        ids, mask = ids.to(prefix.device), mask.to(prefix.device)
        emb = self._model.get_input_embeddings()(ids)
        inputs = torch.cat([prefix.to(emb.dtype), emb], dim=1)
        logits = self._model(inputs_embeds=inputs, use_cache=False).logits.float()
        p = prefix.shape[1]
        pred = logits[:, p - 1:p - 1 + ids.shape[1]]
        nll = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), ids.reshape(-1), reduction="none")
        m = mask.reshape(-1).float()
        den = m.sum() if denominator is None else denominator
        return (nll * m).sum() / den.clamp_min(1.0)

    @torch.no_grad()
    def decode(self, prefix: torch.Tensor, max_tokens: int) -> list[str]:
        """Greedy traces from ``prefix`` [B, P, D_lm]: up to ``max_tokens`` tokens or eos each."""
        emb_dtype = self._model.get_input_embeddings().weight.dtype
        out = self._model.generate(inputs_embeds=prefix.to(emb_dtype),
                                   attention_mask=torch.ones(prefix.shape[:2], dtype=torch.long,
                                                             device=prefix.device),
                                   max_new_tokens=max_tokens, do_sample=False,
                                   eos_token_id=self._eos_id, pad_token_id=self._pad_id)
        traces = []
        for row in out.tolist():
            if self._eos_id in row:
                row = row[:row.index(self._eos_id)]
            traces.append(self._tokenizer.decode(row, skip_special_tokens=True))
        return traces


class PrefixProjector(nn.Module):
    """Latents z [B, K_c, D_vlm] -> the small LM's soft prefix [B, K_c * m, D_lm]."""

    def __init__(self, vlm_dim: int, lm_dim: int, per_latent: int) -> None:
        super().__init__()
        self.per_latent = per_latent
        self.norm = nn.LayerNorm(vlm_dim)
        self.proj = nn.Linear(vlm_dim, per_latent * lm_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b, k, _ = z.shape
        return self.proj(self.norm(z)).view(b, k * self.per_latent, -1)
