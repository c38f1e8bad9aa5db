"""Wan's text context: the text encoder's states zero-padded to ``text_len``, read with no mask.

Wan (its own code and diffusers' ``WanPipeline.encode_prompt``) keeps a caption's real UMT5
positions, pads the states with zeros to ``max_sequence_length`` (512 for Wan2.2) and hands the
transformer all of them with **no** attention mask: the zero rows go through the text embedder
(whose biases make them a learned "padding" vector) and every query attends to them. A tower
started from Wan's weights sees what it was pretrained on only if it gets the same context.

Why here, in the model, and not in the shards' reader: every way into the Wan tower (the
loader's batches, a context source's aligned states, a policy's or the server's captions) passes
through the denoiser's Wan path, so padding there leaves no path that could hand the tower a
shorter, masked context; and the loader keeps moving only the real positions between worker
processes (a padded caption of Wan2.2 is 512 x 4096 float16 = 4 MiB).
"""

from __future__ import annotations

import torch


def pad_text_context(states: torch.Tensor, valid: torch.Tensor | None, text_len: int,
                     where: str = "text states") -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, L, D]`` states and their real positions ``[B, L]`` -> Wan's context ``[B, text_len, D]``
    (the real positions, then zeros: whatever sat in padded positions is dropped) and the real
    positions ``[B, text_len]`` (the action tower and the remaining-time head keep masking with them).

    Raises:
        ValueError: a row has real positions at or past ``text_len`` (Wan truncates its prompts at
            ``text_len`` tokens; the states were made with a longer ``max_length``).
    """
    b, length, _ = states.shape
    if valid is None:
        valid = torch.ones(b, length, dtype=torch.bool, device=states.device)
    if length > text_len:
        if valid[:, text_len:].any():
            rows = valid.sum(dim=1)
            row = int(rows.argmax())
            raise ValueError(f"{where}: row {row} has {int(rows[row])} real positions, the Wan tower reads "
                             f"model.text_len={text_len} (make the text states with --max-length <= {text_len})")
        states, valid = states[:, :text_len], valid[:, :text_len]
    states = states * valid[..., None].to(states.dtype)
    pad = text_len - states.shape[1]
    return (torch.nn.functional.pad(states, (0, 0, 0, pad)),
            torch.nn.functional.pad(valid, (0, pad), value=False))
