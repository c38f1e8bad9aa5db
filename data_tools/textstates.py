"""Frozen text-encoder states of each sample's caption, next caption and task (``embed-captions``).

As Wan's pipelines encode a prompt: the tokenizer (with its end-of-sequence token, truncated at
``max_length``) and the frozen ``UMT5EncoderModel``'s ``last_hidden_state``, with the padding
positions removed. Texts are batched (padded to the longest in the batch, the attention mask
hiding the padding). Per sample, float16:

* ``caption_states.npy`` [L_c, D], ``next_caption_states.npy`` [L_n, D], ``task_states.npy`` [L_t, D]
* ``text_lengths.npy`` int32 [3]: L_c, L_n, L_t (a missing text counts as the empty string)

On conditioner shards (``build-conditioner``) ``caption`` is the target caption, the event in
progress at the observation.

Beside ``index.json``, once: ``empty_text_states.npy`` float16 [L_0, D], the states of the empty
string, which caption drop swaps in for a dropped caption. Wan's own prompt cleaning (ftfy,
whitespace) is not applied: captions in the shards are already plain text.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cut import npy_bytes
from .errors import DataToolsError
from .shardread import sample_meta

TEXTS = ("caption", "next_caption", "task")
MEMBERS = {"caption": "caption_states.npy", "next_caption": "next_caption_states.npy",
           "task": "task_states.npy"}
LENGTHS = "text_lengths.npy"
EMPTY_FILE = "empty_text_states.npy"
MAX_LENGTH = 512  # Wan's max_sequence_length

_MODELS: dict = {}  # (encoder, tokenizer, device) -> (tokenizer, encoder), one per process


@dataclass(frozen=True)
class EmbedCaptions:
    """The ``compute`` of ``augment_shards`` for text states (picklable: worker processes)."""
    encoder: str
    tokenizer: str
    device: str = "cpu"
    batch_size: int = 16
    max_length: int = MAX_LENGTH
    threads: int = 0  # torch CPU threads per worker process (0: torch's default)

    def models(self):
        key = (self.encoder, self.tokenizer, self.device)
        if key not in _MODELS:
            from .frozen import load_text_encoder, use_threads
            use_threads(self.threads)
            _MODELS[key] = load_text_encoder(Path(self.encoder), Path(self.tokenizer), self.device)
        return _MODELS[key]

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        """float16 [L_i, D] per text, padding removed."""
        import torch

        tok, enc = self.models()
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = tok(texts[start:start + self.batch_size], padding="longest", truncation=True,
                        max_length=self.max_length, add_special_tokens=True,
                        return_attention_mask=True, return_tensors="pt")
            ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
            with torch.no_grad():
                states = enc(input_ids=ids, attention_mask=mask).last_hidden_state.float().cpu()
            for s, n in zip(states, mask.sum(dim=1).tolist()):
                out.append(s[:n].to(torch.float16).numpy())
        return out

    def __call__(self, samples, shard: Path) -> list[dict[str, bytes]]:
        texts = []
        for key, members in samples:
            meta = sample_meta(members, f"{shard}: sample {key}")
            for name in TEXTS:
                value = meta.get(name)
                if value is not None and not isinstance(value, str):
                    raise DataToolsError(f"{shard}: sample {key}.json: {name!r} must be text, "
                                         f"found {type(value).__name__}")
                texts.append(value or "")
        states = self.encode(texts)
        result = []
        for i in range(len(samples)):
            own = states[i * len(TEXTS):(i + 1) * len(TEXTS)]
            members = {MEMBERS[name]: npy_bytes(s) for name, s in zip(TEXTS, own)}
            members[LENGTHS] = npy_bytes(np.array([len(s) for s in own], dtype=np.int32))
            result.append(members)
        return result


def embed_captions(shards: Path, text_encoder: Path, tokenizer: Path | None = None,
                   device: str = "cpu", batch_size: int = 16, workers: int = 1,
                   max_length: int = MAX_LENGTH, progress: bool = True,
                   force: bool = False) -> dict:
    """Add the text-encoder states to every sample of ``shards`` (see the module doc)."""
    from .augment import augment_shards
    from .frozen import check_device, check_text_encoder, find_tokenizer, fingerprint, threads_per_worker
    from .shardread import read_index

    if batch_size < 1 or workers < 1 or max_length < 1:
        raise DataToolsError(f"--batch-size ({batch_size}), --workers ({workers}) and "
                             f"--max-length ({max_length}) must be positive")
    read_index(shards)  # a missing index.json fails before the model loads
    check_text_encoder(text_encoder)  # a wrong folder fails naming its config.json
    check_device(device)
    tok_folder = find_tokenizer(text_encoder, tokenizer)
    compute = EmbedCaptions(str(Path(text_encoder).resolve()), str(tok_folder.resolve()), device,
                            batch_size, max_length, threads_per_worker(device, workers))
    empty = compute.encode([""])[0]
    empty_bytes = npy_bytes(empty)
    spec = {
        "members": dict(MEMBERS),
        "lengths": {"member": LENGTHS, "order": list(TEXTS), "dtype": "int32"},
        "dtype": "float16",
        "dim": int(empty.shape[1]),
        "max_length": max_length,
        "source": str(Path(text_encoder).resolve()),
        "tokenizer": str(tok_folder.resolve()),
        "model_class": "UMT5EncoderModel",
        "fingerprint": fingerprint(text_encoder, tok_folder),
        "rule": "tokenizer(text) with end-of-sequence token, truncated at max_length -> "
                "encoder last_hidden_state, padding removed; a missing text is ''",
        "empty": {"file": EMPTY_FILE, "length": int(empty.shape[0]), "sha256": hashlib.sha256(empty_bytes).hexdigest()},
    }
    return augment_shards(shards, "text_states", spec, (*MEMBERS.values(), LENGTHS), compute,
                          workers, progress, force, identity=("fingerprint", "max_length"),
                          side_files={EMPTY_FILE: empty_bytes})
