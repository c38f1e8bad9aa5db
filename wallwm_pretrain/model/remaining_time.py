"""The remaining-time head: how many latent frames are left until the current event ends.

Event mode denoises a whole event at a time, but at inference nobody tells the model how long
the event is: it denoises ``data.max_frames`` steps and must decide how many of them to
execute. This head answers that, as WALL-WM's conditioner does, from what is known *before*
denoising: the clean first frame, the state token and the caption states. It deliberately
reads nothing that depends on the sample's length (the towers' token states do: their
attention masks cover the real steps only, so they would leak the answer during training).

Target: frames (latent frames, ``frame_stride`` control steps each) from the sample's first
step to the end of the event it was cut from, so a crop of a long event learns "more than
fits"; loss: Huber (delta 1 frame), one value per sample. Inference converts back to control
steps (:meth:`WallWM.remaining_steps`).
"""

from __future__ import annotations

import torch
from torch import nn

from wallwm_pretrain.model.embeddings import mark_adamw

HUBER_DELTA = 1.0  # latent frames: quadratic within one frame of the target, linear beyond


class RemainingTimeHead(nn.Module):
    """(clean first-frame patches, state token, caption states) -> remaining latent frames [B]."""

    def __init__(self, hidden: int, patch_dim: int) -> None:
        super().__init__()
        self.frame_in = mark_adamw(nn.Linear(patch_dim, hidden))
        self.norm = nn.LayerNorm(3 * hidden)
        self.mlp = nn.Sequential(nn.Linear(3 * hidden, hidden), nn.SiLU(), mark_adamw(nn.Linear(hidden, 1)))

    def forward(
        self, first_frame: torch.Tensor, state: torch.Tensor, text: torch.Tensor, text_valid: torch.Tensor
    ) -> torch.Tensor:
        """
        Args:
            first_frame: [B, P, D] patchified clean first frame.
            state: [1, B, H] the state token.
            text: [L, B, H] caption states; text_valid [B, L] True on real tokens.
        """
        frame = self.frame_in(first_frame).mean(dim=1)
        w = text_valid.transpose(0, 1).unsqueeze(-1).to(text.dtype)  # [L, B, 1]
        caption = (text * w).sum(0) / w.sum(0).clamp_min(1.0)
        x = torch.cat([frame, state[0], caption], dim=-1)
        return self.mlp(self.norm(x)).squeeze(-1)


def huber_sum(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Summed Huber loss (divided by a sample count by the caller, local or global)."""
    return nn.functional.huber_loss(pred.float(), target.float(), reduction="sum", delta=HUBER_DELTA)
