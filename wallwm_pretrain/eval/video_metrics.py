"""Scores of a predicted video against the recorded frames: PSNR and SSIM from torchmetrics.

Frames are uint8 ``[F, V, H, W, 3]`` (frame ``j`` at control step ``j * K_p``, frame 0 the
observation the prediction starts from, which every predictor is given and which is therefore
left out). Each future frame of each view is one image in ``[0, 1]``:

* ``psnr``: torchmetrics' peak signal-to-noise ratio of the event's images taken together (one
  mean squared error over all their pixels, data range 1), in dB;
* ``ssim``: torchmetrics' structural similarity (Gaussian window 11, sigma 1.5), the mean over
  the event's images.

Feature-network metrics (LPIPS, FVD) need network weights; the packages that compute them
(torchmetrics' LPIPS and FVD through torchvision / torch-fidelity, the ``lpips`` package) fetch
their backbone weights from the internet on first use, which nothing here may do. They are
reported as skipped with that reason (:func:`skipped_metrics`), never downloaded.
"""

from __future__ import annotations

import numpy as np
import torch

METRICS = ("psnr", "ssim")


def as_images(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``[F, V, H, W, 3]`` -> float ``[F * V, 3, H, W]`` in [0, 1]."""
    x = torch.from_numpy(np.array(frames)).float().div(255.0)  # a copy: shard arrays are read-only
    return x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2)


def video_scores(predicted: np.ndarray, recorded: np.ndarray) -> dict[str, float]:
    """PSNR and SSIM of the future frames (1..) of ``predicted`` against ``recorded``.

    Raises:
        ValueError: different shapes, or no future frame to score.
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    if predicted.shape != recorded.shape:
        raise ValueError(f"predicted frames {predicted.shape} and recorded frames {recorded.shape} differ in shape")
    if predicted.shape[0] < 2:
        raise ValueError(f"{predicted.shape[0]} frame(s): no future frame to score after the first")
    pred, rec = as_images(predicted[1:]), as_images(recorded[1:])
    return {
        "psnr": float(peak_signal_noise_ratio(pred, rec, data_range=1.0)),
        "ssim": float(structural_similarity_index_measure(pred, rec, data_range=1.0)),
    }


def skipped_metrics() -> dict[str, str]:
    """Feature-network metrics not computed, each with the reason."""
    reason = ("its feature network's weights are not shipped by any installed package (torchmetrics, lpips and "
              "torch-fidelity download them on first use), and nothing here downloads weights at run time")
    return {"lpips": reason, "fvd": reason}
