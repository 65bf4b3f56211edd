"""Tiny random-weight Qwen2.5-VL / Qwen2-VL checkpoints in the real on-disk format (save_pretrained).

They exercise the real loading and prompting path offline and in seconds on a CPU; their answers and
maps are meaningless. Each folder carries a `DECAF_RANDOM_WEIGHTS` file and `decaf_random_weights: true`
in config.json, so anything made with them is labelled as random-weight output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DecafError
from .loading import RANDOM_WEIGHTS_MARKER

__all__ = ["TINY_KINDS", "build_tiny_qwen", "byte_level_tokenizer", "save_tiny"]

TINY_KINDS = ("qwen2_5_vl", "qwen2_vl")

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen-VL chat layout (spec §2): default system turn, visual item(s) then text in the user turn,
# generation prompt "<|im_start|>assistant\n".
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' or 'image' in item %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'video' or 'video' in item %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in item %}{{ item['text'] }}"
    "{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_VOCAB = 320  # 256 bytes + 7 specials, rounded up
_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4}
_ROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}  # sums to head_dim/2 = 8
_QK_GAIN = 4.0  # random init gives near-uniform attention; sharper maps make the tests more telling


def _byte_symbols() -> list[str]:
    """The printable stand-in character of each byte 0..255 (the GPT-2 byte-level convention)."""
    keep = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    )
    symbols, extra = {}, 0
    for b in range(256):
        if b in keep:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def byte_level_tokenizer(
    special_tokens: tuple[str, ...] = SPECIAL_TOKENS,
    extra_special_tokens: dict[str, str] | None = None,
) -> Any:
    """An offline tokenizer with no merges: every byte is one token (ids 0..255), specials from 256 on."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {symbol: i for i, symbol in enumerate(_byte_symbols())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    if extra_special_tokens is None:
        extra_special_tokens = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=extra_special_tokens,
    )


def _processor(kind: str, tokenizer: Any) -> Any:
    from transformers import (
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    size = {"shortest_edge": 4 * 28 * 28, "longest_edge": 16384 * 28 * 28}
    image_processor = Qwen2VLImageProcessor(size=size)
    video_processor = Qwen2VLVideoProcessor(size=size)
    cls = Qwen2_5_VLProcessor if kind == "qwen2_5_vl" else Qwen2VLProcessor
    return cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def _model(kind: str, ids: dict[str, int]) -> Any:
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
    )

    text = dict(
        _TEXT,
        vocab_size=_VOCAB,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        rope_parameters=dict(_ROPE),
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
        bos_token_id=None,
    )
    tokens = dict(
        image_token_id=ids["image"],
        video_token_id=ids["video"],
        vision_start_token_id=ids["vision_start"],
        vision_end_token_id=ids["vision_end"],
    )
    common_vision = dict(depth=2, num_heads=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    if kind == "qwen2_5_vl":
        vision = dict(
            common_vision,
            hidden_size=32,
            intermediate_size=64,
            out_hidden_size=_TEXT["hidden_size"],
            window_size=112,
            fullatt_block_indexes=[1],
            tokens_per_second=2,
        )
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens)
        return Qwen2_5_VLForConditionalGeneration(config)
    vision = dict(common_vision, embed_dim=32, mlp_ratio=2, hidden_size=_TEXT["hidden_size"])
    config = Qwen2VLConfig(text_config=text, vision_config=vision, **tokens)
    return Qwen2VLForConditionalGeneration(config)


def build_tiny_qwen(kind: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random `kind` ("qwen2_5_vl" or "qwen2_vl") checkpoint into `out_dir`; return the folder.

    Same files as a hub checkpoint (config.json, model.safetensors, generation_config.json, tokenizer,
    processor configs, chat template), so `load_mllm(out_dir)` takes the real path, offline.
    """
    if kind not in TINY_KINDS:
        raise DecafError(f"unknown tiny model kind {kind!r}: use one of {', '.join(TINY_KINDS)}")
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = byte_level_tokenizer()
    token_id = tokenizer.convert_tokens_to_ids
    ids = {
        "eos": token_id("<|im_end|>"),
        "pad": token_id("<|endoftext|>"),
        "image": token_id("<|image_pad|>"),
        "video": token_id("<|video_pad|>"),
        "vision_start": token_id("<|vision_start|>"),
        "vision_end": token_id("<|vision_end|>"),
    }
    torch.manual_seed(seed)
    model = _model(kind, ids).eval()
    return save_tiny(model, _processor(kind, tokenizer), out, kind, seed, ids, _VOCAB)


def save_tiny(
    model: Any, processor: Any, out: Path, kind: str, seed: int, ids: dict[str, int], vocab: int
) -> Path:
    """Sharpen the random attention, label the checkpoint as random, save model + processor into `out`."""
    import torch
    from transformers import GenerationConfig

    with torch.no_grad():
        for layer in model.model.language_model.layers:
            layer.self_attn.q_proj.weight.mul_(_QK_GAIN)
            layer.self_attn.k_proj.weight.mul_(_QK_GAIN)
    model.config.decaf_random_weights = True
    # greedy answers limited to a-z and end-of-turn, so random output reads as (nonsense) words
    allowed = set(range(ord("a"), ord("z") + 1)) | {ids["eos"]}
    model.generation_config = GenerationConfig(
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
        do_sample=False,
        suppress_tokens=[i for i in range(vocab) if i not in allowed],
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / RANDOM_WEIGHTS_MARKER).write_text(
        f"Tiny random-weight {kind} checkpoint made by decaf_backend (seed {seed}): outputs are meaningless.\n"
    )
    return out
