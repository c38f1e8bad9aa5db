"""Frozen text-encoder states of each sample's caption, next caption and task (``embed-captions``).

As Wan's pipelines encode a prompt: the tokenizer (with its end-of-sequence token, truncated at
``max_length``) and the frozen ``UMT5EncoderModel``'s ``last_hidden_state``, with the padding
positions removed (the Wan path zero-pads them to ``model.text_len`` as Wan does, in the model:
``wallwm_pretrain/model/wan/text.py``). Texts are batched (padded to the longest in the batch, the attention mask
hiding the padding). Per sample, float16:

* ``caption_states.npy`` [L_c, D], ``next_caption_states.npy`` [L_n, D], ``task_states.npy`` [L_t, D]
* ``text_lengths.npy`` int32 [3]: L_c, L_n, L_t (a missing text counts as the empty string)

On conditioner shards (``build-conditioner``) ``caption`` is the target caption, the event in
progress at the observation. On episode shards (``build-episodes``, ``"kind": "episode"``)
``caption`` is the task, and each sample also gets the states of its events' captions (the
json's ``events``, in order), as ``build-episodes`` carries them over from event shards:

* ``event_states.npy`` [E, L, D] (zero padded to the longest), ``event_states_len.npy`` int32 [E]

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
from .derive import shard_kind
from .episodes import EVENT_STATES, EVENT_STATES_LEN
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
    events: bool = False  # episode shards: also the states of each event's caption

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
        texts, spans = [], []  # spans: per sample, the [start, stop) of its texts
        for key, members in samples:
            meta = sample_meta(members, f"{shard}: sample {key}")
            start = len(texts)
            for name in TEXTS:
                value = meta.get(name)
                if value is not None and not isinstance(value, str):
                    raise DataToolsError(f"{shard}: sample {key}.json: {name!r} must be text, "
                                         f"found {type(value).__name__}")
                texts.append(value or "")
            if self.events:
                texts += _event_captions(meta, f"{shard}: sample {key}.json")
            spans.append((start, len(texts)))
        states = self.encode(texts)
        result = []
        for start, stop in spans:
            own = states[start:start + len(TEXTS)]
            members = {MEMBERS[name]: npy_bytes(s) for name, s in zip(TEXTS, own)}
            members[LENGTHS] = npy_bytes(np.array([len(s) for s in own], dtype=np.int32))
            if self.events:
                caps = states[start + len(TEXTS):stop]
                padded = np.zeros((len(caps), max(len(c) for c in caps), caps[0].shape[1]), np.float16)
                for i, c in enumerate(caps):
                    padded[i, :len(c)] = c
                members[EVENT_STATES] = npy_bytes(padded)
                members[EVENT_STATES_LEN] = npy_bytes(np.array([len(c) for c in caps], np.int32))
            result.append(members)
        return result


def _event_captions(meta: dict, where: str) -> list[str]:
    events = meta.get("events")
    if not isinstance(events, list) or not events or not all(
            isinstance(e, dict) and isinstance(e.get("caption"), str) for e in events):
        raise DataToolsError(f"{where}: episode samples need 'events', a non-empty list of "
                             "objects with a text 'caption' (written by build-episodes)")
    return [e["caption"] for e in events]


IDENTITY = ("fingerprint", "max_length")  # spec keys that must match for earlier work to count


def embed_captions(shards: Path, text_encoder: Path, tokenizer: Path | None = None,
                   device: str = "cpu", batch_size: int = 16, workers: int = 1,
                   max_length: int = MAX_LENGTH, progress: bool = True,
                   force: bool = False, rank: int = 0, world: int = 1) -> dict:
    """Add the text-encoder states to every sample of ``shards`` (see the module doc); with
    ``world > 1`` to the shards of this ``rank`` only (``ranks.py``)."""
    from .augment import augment_shards
    from .frozen import check_device, check_text_encoder, find_tokenizer, fingerprint, threads_per_worker
    from .shardread import read_index

    if batch_size < 1 or workers < 1 or max_length < 1:
        raise DataToolsError(f"--batch-size ({batch_size}), --workers ({workers}) and "
                             f"--max-length ({max_length}) must be positive")
    episodes = shard_kind(read_index(shards)) == "episode"  # a missing index.json fails here
    check_text_encoder(text_encoder)  # a wrong folder fails naming its config.json
    check_device(device)
    tok_folder = find_tokenizer(text_encoder, tokenizer)
    compute = EmbedCaptions(str(Path(text_encoder).resolve()), str(tok_folder.resolve()), device,
                            batch_size, max_length, threads_per_worker(device, workers), episodes)
    empty = compute.encode([""])[0]
    empty_bytes = npy_bytes(empty)
    members = dict(MEMBERS, **({"events": EVENT_STATES} if episodes else {}))
    spec = {
        "members": members,
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
    if episodes:
        spec["event_lengths"] = {"member": EVENT_STATES_LEN, "dtype": "int32",
                                 "rule": "real rows of each event's states in event_states.npy"}
    added = (*MEMBERS.values(), LENGTHS) + ((EVENT_STATES, EVENT_STATES_LEN) if episodes else ())
    return augment_shards(shards, "text_states", spec, added, compute,
                          workers, progress, force, identity=IDENTITY,
                          side_files={EMPTY_FILE: empty_bytes}, rank=rank, world=world)
