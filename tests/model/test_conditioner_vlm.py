"""The frozen conditioner VLM on make-tiny's vlm/: states, padding, freezing, tokenizing, errors."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from wallwm_pretrain.convert.tiny import CORPUS, make_tiny
from wallwm_pretrain.model.conditioner.errors import ConditionerError
from wallwm_pretrain.model.conditioner.vlm import (FrozenVLM, check_vlm_folder, qwen_turn,
                                                   vlm_memory_bytes)

TOKENS_PER_VIEW = 4  # a 32x32 view: 4x4 patches of 8, merged 2x2
SHORT = "task: open the drawer"
LONG = ("task: pick up the red block and place it in the bowl. done: reach towards the block; "
        "descend to the block and close the gripper")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("tiny") / "wan", seed=0)


@pytest.fixture(scope="module")
def vlm(tiny) -> FrozenVLM:
    return FrozenVLM.load(tiny["vlm"])


def _write_other_vlm(arch: str, src, dst):
    """A tiny random Qwen3-VL or Qwen2.5-VL beside make-tiny's tokenizer and image processor."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(src, local_files_only=True)
    ids = {k: tok.convert_tokens_to_ids(f"<|{k}|>")
           for k in ("image_pad", "video_pad", "vision_start", "vision_end")}
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, bos_token_id=None,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                                     mrope_section=[2, 1, 1]))  # head_dim 8: 4 frequencies
    vision = dict(hidden_size=16, intermediate_size=32, num_heads=2, patch_size=8,
                  spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=32)
    if arch == "Qwen3VLForConditionalGeneration":
        config = transformers.Qwen3VLConfig(
            text_config=dict(text, head_dim=8), vision_config=dict(
                vision, depth=2, num_position_embeddings=16, deepstack_visual_indexes=[0]),
            image_token_id=ids["image_pad"], video_token_id=ids["video_pad"],
            vision_start_token_id=ids["vision_start"], vision_end_token_id=ids["vision_end"])
    else:
        config = transformers.Qwen2_5_VLConfig(
            text_config=text, vision_config=dict(vision, depth=1, window_size=16,
                                                 fullatt_block_indexes=[0]),
            image_token_id=ids["image_pad"], video_token_id=ids["video_pad"],
            vision_start_token_id=ids["vision_start"], vision_end_token_id=ids["vision_end"])
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("config.json", "*.safetensors"))
    torch.manual_seed(0)
    getattr(transformers, arch)(config).save_pretrained(dst)
    return dst


ARCHS = ["Qwen3_5ForConditionalGeneration", "Qwen3VLForConditionalGeneration",
         "Qwen2_5_VLForConditionalGeneration"]


@pytest.fixture(scope="module")
def vlms(tiny, vlm, tmp_path_factory) -> dict[str, FrozenVLM]:
    root = tmp_path_factory.mktemp("other-vlms")
    out = {ARCHS[0]: vlm}
    for arch in ARCHS[1:]:
        out[arch] = FrozenVLM.load(_write_other_vlm(arch, tiny["vlm"], root / arch))
    return out


def _views(b: int, v: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (b, v, 32, 32, 3), dtype=np.uint8)


def _turn_length(vlm: FrozenVLM, views: int, prompt: str) -> int:
    """Tokens of the turn counted from its text: each <|image_pad|> stands for TOKENS_PER_VIEW."""
    ids = vlm.tokenizer(vlm.prompt_text(views, prompt), add_special_tokens=False)["input_ids"]
    return len(ids) + views * (TOKENS_PER_VIEW - 1)


def test_folder_loads_with_transformers_and_the_ids_match(tiny):
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen3_5ForConditionalGeneration

    model = Qwen3_5ForConditionalGeneration.from_pretrained(tiny["vlm"], local_files_only=True)
    tok = AutoTokenizer.from_pretrained(tiny["vlm"], local_files_only=True)
    proc = AutoImageProcessor.from_pretrained(tiny["vlm"], local_files_only=True)
    cfg = model.config
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert cfg.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert cfg.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert cfg.vision_end_token_id == tok.convert_tokens_to_ids("<|vision_end|>")
    assert cfg.text_config.vocab_size == len(tok)
    assert cfg.text_config.layer_types == ["linear_attention", "full_attention"]
    assert cfg.vision_config.out_hidden_size == cfg.text_config.hidden_size
    assert type(proc).__name__ == "Qwen2VLImageProcessorPil"
    assert proc.patch_size == cfg.vision_config.patch_size
    assert proc.merge_size == cfg.vision_config.spatial_merge_size
    assert proc.temporal_patch_size == cfg.vision_config.temporal_patch_size
    grid = proc(images=[_views(1, 1)[0, 0]], return_tensors="pt")["image_grid_thw"]
    assert grid.tolist() == [[1, 4, 4]]
    # Qwen's special tokens are single tokens, not split by the byte-level pre-tokeniser
    text = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids.count(cfg.image_token_id) == 1 and ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.pad_token == "<|endoftext|>" and tok.chat_template


@pytest.mark.parametrize("arch", ARCHS)
def test_encode_gives_states_with_valid_exactly_on_the_real_tokens(vlms, arch):
    vlm = vlms[arch]
    prompts = [SHORT, LONG, "task: press the button"]
    states, valid = vlm.encode(torch.from_numpy(_views(3, 2)), prompts)
    lengths = [_turn_length(vlm, 2, p) for p in prompts]
    assert states.dtype == torch.float32 and valid.dtype == torch.bool
    assert states.shape == (3, max(lengths), vlm.hidden_size) == (3, max(lengths), 32)
    for i, n in enumerate(lengths):
        assert valid[i, :n].all() and not valid[i, n:].any()
    assert (states[~valid] == 0).all() and (states[valid].abs().sum(-1) > 0).all()


def test_inputs_equal_what_qwens_own_processor_makes(vlm, monkeypatch):
    """Qwen3VLProcessor (Qwen3.5's) on the same views and turns gives the same model inputs.

    The processor insists on a video processor, and every Qwen video processor needs torchvision,
    which is not installed; the class check is skipped so it can be built without one. No videos
    are passed, so the video processor is never used.
    """
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

    monkeypatch.setattr(Qwen3VLProcessor, "check_argument_for_proper_class",
                        lambda self, name, arg: None)
    processor = Qwen3VLProcessor(image_processor=vlm._image_processor, tokenizer=vlm.tokenizer,
                                 video_processor=None, chat_template=vlm.tokenizer.chat_template)
    views, prompts = _views(2, 3, seed=4), [LONG, SHORT]
    turns = [processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}] * 3
                                             + [{"type": "text", "text": p}]}], tokenize=False)
             for p in prompts]
    ref = processor(text=turns, images=[list(v) for v in views], padding=True,
                    padding_side="right", return_tensors="pt")
    mine = vlm.inputs(views, prompts)
    assert set(mine) == set(ref)
    for key, value in mine.items():
        assert torch.equal(value, ref[key].to(value.dtype)), key


@pytest.mark.parametrize("arch", ARCHS)
def test_states_are_the_text_models_last_hidden_states(vlms, arch):
    vlm = vlms[arch]
    """Independent of encode: the model's own forward on the same turn, built here by hand."""
    import transformers
    from transformers import AutoImageProcessor

    model = getattr(transformers, arch).from_pretrained(vlm.folder, local_files_only=True)
    assert type(model) is type(vlm._model)
    proc = AutoImageProcessor.from_pretrained(vlm.folder, local_files_only=True)
    views = _views(1, 2, seed=5)
    text = qwen_turn(2, SHORT).replace("<|image_pad|>", "<|image_pad|>" * TOKENS_PER_VIEW)
    ids = vlm.tokenizer([text], add_special_tokens=False, return_tensors="pt")["input_ids"]
    pix = proc(images=list(views[0]), return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pix["pixel_values"],
                    image_grid_thw=pix["image_grid_thw"],
                    mm_token_type_ids=(ids == model.config.image_token_id).int(),
                    output_hidden_states=True)
    states, valid = vlm.encode(views, [SHORT])
    assert valid.all() and states.shape[1] == ids.shape[1]
    torch.testing.assert_close(states, out.hidden_states[-1], rtol=0, atol=1e-6)
    torch.testing.assert_close(states @ vlm.output_embeddings().T, out.logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_padding_does_not_leak_into_a_samples_states(vlms, arch):
    vlm = vlms[arch]
    views = _views(2, 3, seed=1)
    batch, valid = vlm.encode(views, [SHORT, LONG])
    alone_short, v_short = vlm.encode(views[:1], [SHORT])
    alone_long, v_long = vlm.encode(views[1:], [LONG])
    n = int(v_short.sum())
    assert int(valid[0].sum()) == n < batch.shape[1] == alone_long.shape[1]
    # the same tokens through the same layers; only float reduction order may differ
    torch.testing.assert_close(batch[0, :n], alone_short[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(batch[1], alone_long[0], rtol=0, atol=1e-5)


def test_same_call_twice_gives_identical_states(vlm):
    views = _views(2, 2, seed=2)
    a, va = vlm.encode(views, [SHORT, LONG])
    b, vb = vlm.encode(views, [SHORT, LONG])
    assert torch.equal(a, b) and torch.equal(va, vb)


def test_the_vlm_is_frozen_and_builds_no_graph(vlm):
    params = list(vlm._model.parameters())
    assert params and not any(p.requires_grad for p in params) and not vlm._model.training
    with torch.enable_grad():
        states, _ = vlm.encode(_views(1, 2), [SHORT])
    assert not states.requires_grad and states.grad_fn is None
    for w in (vlm.input_embeddings(), vlm.output_embeddings()):
        assert w.shape == (vlm.vocab_size, vlm.hidden_size) and not w.requires_grad

    class Owner(nn.Module):
        def __init__(self):
            super().__init__()
            self.vlm = vlm
            self.head = nn.Linear(vlm.hidden_size, 4)

    owner = Owner()
    assert set(owner.state_dict()) == {"head.weight", "head.bias"}
    assert len(list(owner.parameters())) == 2


def test_fallback_turn_matches_the_tiny_chat_template(vlm):
    for views in (1, 3):
        assert vlm.prompt_text(views, LONG) == qwen_turn(views, LONG)


def test_tokenize_round_trips_corpus_captions(vlm):
    captions = CORPUS.splitlines()
    ids, mask = vlm.tokenize(captions, max_length=64)
    assert ids.dtype == torch.int64 and mask.dtype == torch.bool
    assert ids.shape == (len(captions), 64) and not mask[:, -1].any()
    assert vlm.eos_token_id == vlm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert vlm.pad_token_id == vlm.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    for caption, row, m in zip(captions, ids, mask):
        n = int(m.sum())
        assert m[:n].all() and not m[n:].any()
        assert row[n - 1] == vlm.eos_token_id and (row[n:] == vlm.pad_token_id).all()
        assert vlm.tokenizer.decode(row[:n - 1].tolist()) == caption
    empty, empty_mask = vlm.tokenize([], max_length=4)
    assert empty.shape == empty_mask.shape == (0, 4)
    cut, cut_mask = vlm.tokenize([captions[0]], max_length=4)
    assert cut_mask.all() and cut[0, -1] == vlm.eos_token_id
    assert cut[0, :3].tolist() == ids[0, :3].tolist()


@pytest.mark.parametrize("arch", ARCHS)
def test_memory_bytes_from_config_equal_the_loaded_parameters(vlms, arch):
    vlm = vlms[arch]
    config = check_vlm_folder(vlm.folder)
    loaded = sum(p.numel() * p.element_size() for p in vlm._model.parameters())
    assert vlm_memory_bytes(config, 4) == loaded
    assert vlm_memory_bytes(config, 2) * 2 == loaded
    with pytest.raises(ConditionerError, match="UMT5EncoderModel"):
        vlm_memory_bytes(dict(config, architectures=["UMT5EncoderModel"]), 4)


def test_errors_name_the_folder_or_file(tiny, tmp_path):
    missing = tmp_path / "no-such-vlm"
    with pytest.raises(ConditionerError, match="no-such-vlm"):
        FrozenVLM.load(missing)
    umt5 = tiny["text_encoder"]
    with pytest.raises(ConditionerError, match=re.escape(f"{umt5 / 'config.json'}") + ".*umt5"):
        check_vlm_folder(umt5)
    for gone in ("config.json", "tokenizer.json", "preprocessor_config.json", "model.safetensors"):
        broken = tmp_path / f"without-{gone}"
        shutil.copytree(tiny["vlm"], broken)
        (broken / gone).unlink()
        with pytest.raises(ConditionerError, match=f"without-{gone}"):
            check_vlm_folder(broken)


def test_bad_images_are_refused(vlm):
    with pytest.raises(ConditionerError, match="uint8"):
        vlm.encode(_views(1, 2).astype(np.float32), [SHORT])
    with pytest.raises(ConditionerError, match="uint8"):
        vlm.encode(_views(1, 2)[0], [SHORT])
    with pytest.raises(ConditionerError, match="2 prompts"):
        vlm.encode(_views(1, 2), [SHORT, LONG])


def test_bfloat16_weights_give_float32_states_on_the_same_tokens(vlm):
    half = FrozenVLM.load(vlm.folder, dtype=torch.bfloat16)
    assert next(half._model.parameters()).dtype == torch.bfloat16
    views = _views(2, 2, seed=3)
    states, valid = half.encode(views, [SHORT, LONG])
    ref, ref_valid = vlm.encode(views, [SHORT, LONG])
    assert states.dtype == torch.float32 and torch.equal(valid, ref_valid)
    assert torch.isfinite(states).all() and (states[~valid] == 0).all()
