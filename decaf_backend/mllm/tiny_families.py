"""Tiny random-weight LLaVA-OneVision, InternVL3 (-hf) and Qwen3-VL checkpoints in the real on-disk format.

Same idea as `tiny.py` (Qwen2/2.5-VL): transformers' own model, processor and tokenizer classes, built
offline (byte-level tokenizer, the family's chat template), saved with save_pretrained, so `load_mllm`
takes the real path. Sizes are cut down so a CPU runs the whole pipeline in seconds; the token layouts
(anyres tiles, InternVL tiles and frame labels, Qwen3-VL timestamps) stay those of the real models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DecafError
from .tiny import TINY_KINDS, build_tiny_qwen, byte_level_tokenizer, save_tiny

__all__ = ["ALL_TINY_KINDS", "FAMILY_KINDS", "build_tiny_mllm"]

FAMILY_KINDS = ("internvl3", "llava_onevision", "qwen3_vl")
ALL_TINY_KINDS = TINY_KINDS + FAMILY_KINDS

_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 8192,
}
_PROJECTOR_OUT = "model.multi_modal_projector.linear_2.weight"
_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}

# transformers' convert_llava_onevision_weights_to_hf.py template (no default system turn)
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n'}}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>\\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# transformers' convert_internvl_weights_to_hf.py template (no default system turn)
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\\n' }}{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}{% endif %}{% endfor %}{% endif %}{{'<|im_end|>\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\\n' }}{% endif %}"
)

# the Qwen3-VL instruct layout: no default system turn, visual items wrapped in vision start/end
QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _text_config(vocab: int, ids: dict[str, int]) -> dict[str, Any]:
    return dict(
        _TEXT,
        model_type="qwen2",
        vocab_size=vocab,
        rope_theta=1e6,
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
    )


def _random_model(
    model_class: Any, config: Any, seed: int, amplify: tuple[str, ...] = (), gain: float = 10.0
) -> Any:
    """The model with seeded random weights, in eval mode; the `amplify` weights scaled by `gain` (as the golden
    tiny models do): random default inits give near-identical visual tokens, so object and background attention
    would not differ across the frame."""
    import torch

    torch.manual_seed(seed)
    model = model_class(config).eval()
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in amplify:
            params[name].mul_(gain)
    return model


def _ids(tokenizer: Any, names: dict[str, str]) -> dict[str, int]:
    return {key: int(tokenizer.convert_tokens_to_ids(token)) for key, token in names.items()}


def _llava_onevision(seed: int) -> tuple[Any, Any, dict[str, int], int]:
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    specials = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>")
    tokenizer = byte_level_tokenizer(specials, {"image_token": "<image>", "video_token": "<video>"})
    ids = _ids(
        tokenizer, {"eos": "<|im_end|>", "pad": "<|endoftext|>", "image": "<image>", "video": "<video>"}
    )
    tile, patch = 56, 8  # 7×7 patches per tile (the real 384-px SigLIP grid, scaled down)
    pinpoints = [[tile * i, tile * j] for i in range(1, 7) for j in range(1, 7)]
    vocab = 261
    config = LlavaOnevisionConfig(
        text_config=_text_config(vocab, ids),
        vision_config=dict(_VISION, model_type="siglip_vision_model", image_size=tile, patch_size=patch),
        image_token_index=ids["image"],
        video_token_index=ids["video"],
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        vision_aspect_ratio="anyres_max_9",
        tie_word_embeddings=False,
    )
    model = _random_model(
        LlavaOnevisionForConditionalGeneration,
        config,
        seed,
        amplify=("model.vision_tower.embeddings.patch_embedding.weight", _PROJECTOR_OUT),
    )
    size = {"height": tile, "width": tile}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=pinpoints),
        video_processor=LlavaOnevisionVideoProcessor(size=size),
        tokenizer=tokenizer,
        num_image_tokens=(tile // patch) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    return model, processor, ids, vocab


def _internvl(seed: int) -> tuple[Any, Any, dict[str, int], int]:
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
    )

    specials = ("<img>", "</img>", "<IMG_CONTEXT>", "<video>", "<|endoftext|>", "<|im_start|>", "<|im_end|>")
    extra = {
        "start_image_token": "<img>",
        "end_image_token": "</img>",
        "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>",
    }
    tokenizer = byte_level_tokenizer(specials, extra)
    ids = _ids(tokenizer, {"eos": "<|im_end|>", "pad": "<|endoftext|>", "image": "<IMG_CONTEXT>"})
    tile, patch = 112, 8  # 14×14 patches, pixel shuffle 0.5 → 7×7 tokens per tile (real: 448 px, 16×16)
    vocab = 263
    config = InternVLConfig(
        text_config=_text_config(vocab, ids),
        vision_config=dict(
            _VISION, image_size=[tile, tile], patch_size=[patch, patch], use_mean_pooling=False
        ),
        image_token_id=ids["image"],
        downsample_ratio=0.5,
        image_seq_length=(tile // patch // 2) ** 2,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    model = _random_model(
        InternVLForConditionalGeneration,
        config,
        seed,
        amplify=("model.vision_tower.embeddings.patch_embeddings.projection.weight", _PROJECTOR_OUT),
    )
    size = {"height": tile, "width": tile}
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(
            size=size, crop_to_patches=True, min_patches=1, max_patches=12, image_mean=mean, image_std=std
        ),
        video_processor=InternVLVideoProcessor(size=size, image_mean=mean, image_std=std),
        tokenizer=tokenizer,
        image_seq_length=config.image_seq_length,
        chat_template=INTERNVL_CHAT_TEMPLATE,
    )
    return model, processor, ids, vocab


def _qwen3_vl(seed: int) -> tuple[Any, Any, dict[str, int], int]:
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    from .tiny import SPECIAL_TOKENS

    tokenizer = byte_level_tokenizer(SPECIAL_TOKENS)
    names = {
        "eos": "<|im_end|>",
        "pad": "<|endoftext|>",
        "image": "<|image_pad|>",
        "video": "<|video_pad|>",
        "vision_start": "<|vision_start|>",
        "vision_end": "<|vision_end|>",
    }
    ids = _ids(tokenizer, names)
    vocab = 320
    text = dict(
        _TEXT,
        vocab_size=vocab,
        head_dim=16,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 5e5,
            "mrope_section": [2, 3, 3],
            "mrope_interleaved": True,
        },
        pad_token_id=ids["pad"],
    )
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=_TEXT["hidden_size"],
        num_position_embeddings=256,
        deepstack_visual_indexes=[0, 1],
    )
    config = Qwen3VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["image"],
        video_token_id=ids["video"],
        vision_start_token_id=ids["vision_start"],
        vision_end_token_id=ids["vision_end"],
    )
    model = _random_model(Qwen3VLForConditionalGeneration, config, seed)
    size = {"shortest_edge": 4 * 32 * 32, "longest_edge": 16384 * 32 * 32}
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size, patch_size=16, merge_size=2, temporal_patch_size=2),
        video_processor=Qwen3VLVideoProcessor(size=size),
        tokenizer=tokenizer,
        chat_template=QWEN3_CHAT_TEMPLATE,
    )
    return model, processor, ids, vocab


_BUILDERS = {"internvl3": _internvl, "llava_onevision": _llava_onevision, "qwen3_vl": _qwen3_vl}


def build_tiny_mllm(kind: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random checkpoint of `kind` (one of ALL_TINY_KINDS) into `out_dir`; return the folder."""
    if kind in TINY_KINDS:
        return build_tiny_qwen(kind, out_dir, seed=seed)
    if kind not in _BUILDERS:
        raise DecafError(f"unknown tiny model kind {kind!r}: use one of {', '.join(ALL_TINY_KINDS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, processor, ids, vocab = _BUILDERS[kind](seed)
    return save_tiny(model, processor, out, kind, seed, ids, vocab)
