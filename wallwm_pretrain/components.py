"""The named components of a model, for ``model.train_parts`` (which parts a training stage trains).

WALL-WM trains in stages, each training some components and freezing the rest (the paper's
Table 1, ``docs`` and ``configs/stages``). A component is a set of parameter names, matched by
the patterns below on the whole model's names (``layers.<i>.`` / ``action_layers.<i>.`` carry the
global layer index, so every pipeline rank classifies its own parameters alike). Every parameter
of every model belongs to exactly one component (``tests/test_stages.py`` checks it).

``model.kind=towers``, ``model.video_tower=small`` (the laptop analogue):

- ``video_tower``: ``video_in``, ``video_patch_pos``, ``time_video``, ``layers.<i>.video``,
  ``video_out`` (patch embedding, video blocks, video head);
- ``action_tower``: ``action_in``, ``action_group_pos``, ``state_in``, ``time_action``,
  ``layers.<i>.action`` (with the coupling cross-attention to the video block, ``video_attn``),
  ``action_out`` (action and state-token embeddings, action blocks, action head);
- ``caption_encoder``: ``caption`` (the byte-level caption encoder both towers read; the stand-in
  for the frozen text encoder, which here has to be trained once, in the video stage);
- ``time_head``: ``time_head`` (the towers' remaining-time head);
- the context components below, with ``model.context.sources``.

``model.kind=towers``, ``model.video_tower=wan``:

- ``video_tower``: ``video`` (the Wan transformer: patch embedding, condition embedder, blocks
  with their cross-view attention and camera embedding, output head);
- ``action_tower``: ``action_in``, ``action_group_pos``, ``state_in``, ``time_action``,
  ``text_in`` (the action tower's projection of the text-encoder states), ``action_layers``
  (action blocks and their coupling projections), ``action_out``;
- ``time_head``: ``time_head``;
- with ``model.context.sources`` (unified mode's text-context sources, ``model/context.py``):
  ``context_conditioner``: ``context.adapter``, ``context.align`` (the conditioner's adapter and
  alignment head, reached by the DiT loss through the ``global`` source); ``context_staircase``:
  ``context.branch`` (the Staircase branch; stage 5 freezes it); ``context_projection``:
  ``context.staircase_proj`` (Staircase latents -> the towers' text context) and, on the small
  towers, ``context.global_proj`` (aligned states -> their text stream).

(The VAE and the UMT5 text encoder run offline, ``data_tools encode-latents`` /
``embed-captions``: they are in no training state and always frozen.)

``model.kind=conditioner`` (the frozen VLM is outside the state dict and always frozen):

- ``adapter``: ``adapter`` (the VLM project-out: norm and projection of the VLM states);
- ``alignment_head``: ``align`` (VLM states -> the text encoder's states of the next caption);
- ``next_event_head``: ``next_event`` (the next event's caption, token by token);
- ``time_head``: ``time`` (remaining time in the current event).

``model.kind=staircase`` (stage 4; the frozen VLM and small LM are outside the state dict):

- ``staircase_branch``: ``branch`` (the mixture-of-transformers branch: relay and upper layers);
- ``prefix_projector``: ``projector`` (latents -> the small LM's soft prefix).

This module imports nothing of the model: the config checks names against it before any work.
"""

from __future__ import annotations

import re

ALL = "all"

_TOWERS_SMALL = {
    "video_tower": r"(video_in|video_patch_pos|time_video|video_out)\.|layers\.\d+\.video\.",
    "action_tower": r"(action_in|action_group_pos|state_in|time_action|action_out)\.|layers\.\d+\.action\.",
    "caption_encoder": r"caption\.",
    "time_head": r"time_head\.",
}
_TOWERS_WAN = {
    "video_tower": r"video\.",
    "action_tower": r"(action_in|action_group_pos|state_in|time_action|text_in|action_out|action_layers)\.",
    "time_head": r"time_head\.",
}
# unified mode's context sources (model.context.sources; model/context.py)
_CONTEXT = {
    "context_conditioner": r"context\.(adapter|align)\.",
    "context_staircase": r"context\.branch\.",
    "context_projection": r"context\.(staircase_proj|global_proj)\.",
}
# what each earlier stage's weights give to those (model.context.<key>: source prefixes, taken
# under "context."): the conditioner's adapter and alignment head, the Staircase branch
CONTEXT_FROM = {"conditioner_from": ("adapter.", "align."), "staircase_from": ("branch.",)}
_STAIRCASE = {
    "staircase_branch": r"branch\.",
    "prefix_projector": r"projector\.",
}
_CONDITIONER = {
    "adapter": r"adapter\.",
    "alignment_head": r"align\.",
    "next_event_head": r"next_event\.",
    "time_head": r"time\.",
}


def component_patterns(kind: str, video_tower: str) -> dict[str, str]:
    """Component name -> regular expression matched at the start of a parameter name, for a
    model of ``model.kind`` and ``model.video_tower``. This table per kind is the registry of
    component names (config validation reads it before any model exists, so it cannot ask a
    model class)."""
    if kind == "conditioner":
        return dict(_CONDITIONER)
    if kind == "staircase":
        return dict(_STAIRCASE)
    return {**(_TOWERS_WAN if video_tower == "wan" else _TOWERS_SMALL), **_CONTEXT}


def component_names(kind: str, video_tower: str) -> list[str]:
    """The valid ``model.train_parts`` entries (besides ``all``) of such a model."""
    return list(component_patterns(kind, video_tower))


def component_of(name: str, patterns: dict[str, str]) -> str:
    """The component a parameter (or state-dict entry) belongs to.

    Raises:
        KeyError: ``name`` matches no component (a parameter this table does not know: the
            model grew a part; add it here).
    """
    for component, pattern in patterns.items():
        if re.match(pattern, name):
            return component
    raise KeyError(f"parameter {name!r} belongs to no component of {sorted(patterns)} (wallwm_pretrain/components.py)")


def resolve_train_parts(train_parts: list[str], kind: str, video_tower: str) -> list[str]:
    """``model.train_parts`` as component names (``all`` expanded).

    Raises:
        ValueError: an unknown name (the message names the valid ones), or nothing to train.
    """
    valid = component_names(kind, video_tower)
    parts = list(train_parts)
    if not parts:
        raise ValueError(f"model.train_parts is empty: nothing would train; name some of {', '.join(valid)} (or all)")
    unknown = [p for p in parts if p != ALL and p not in valid]
    if unknown:
        what = f"model.kind={kind}" + (f", model.video_tower={video_tower}" if kind == "towers" else "")
        raise ValueError(f"model.train_parts: unknown component {unknown[0]!r}; the components of {what} are "
                         f"{', '.join(valid)} (or all)")
    if ALL in parts:
        return valid
    return [p for p in valid if p in parts]
