"""A random-weight SAM2.1 in the real on-disk format, for tests and `make-tiny-models` (like mllm/tiny.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .loading import load_sam2_config

# A 17M-parameter, 256-pixel SAM2.1 for tests (deps.md §3): global attention must avoid q-pool blocks.
TINY_BASE_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
TINY_OVERRIDES: dict[str, Any] = {
    "model.image_size": 256,
    "model.image_encoder.trunk.stages": [1, 1, 2, 1],
    "model.image_encoder.trunk.global_att_blocks": [3],
    "model.memory_attention.num_layers": 1,
    "model.memory_attention.layer.dim_feedforward": 256,
    "model.memory_attention.layer.self_attention.feat_sizes": [16, 16],
    "model.memory_attention.layer.cross_attention.feat_sizes": [16, 16],
    "model.num_maskmem": 3,
}
TINY_CHECKPOINT = "sam2_tiny_random.pt"
TINY_OBJECT_SCORE_BIAS = 10.0


def build_tiny_sam2(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a random-weight 256-px SAM2.1 (17M parameters) as `config.yaml` + `{"model": state_dict}`
    checkpoint, the on-disk format of the real models; `load_sam2_predictor(out_dir)` reads it back.
    Its config carries `random_weights: true` so outputs made with it are labelled as meaningless."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_sam2_config(TINY_BASE_CONFIG)
    for key, value in TINY_OVERRIDES.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = instantiate(cfg.model, _recursive_=True)
    with torch.no_grad():
        # a random object-score head mostly says "no object", which blanks every mask; a positive bias keeps
        # the (random) decoder masks, so tests see masks that depend on the prompts
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(TINY_OBJECT_SCORE_BIAS)
    cfg.random_weights = True
    header = "# @package _global_\n# Tiny random-weight SAM2.1 for tests (decaf_backend.sam2.tiny.build_tiny_sam2)\n"
    (out / "config.yaml").write_text(header + OmegaConf.to_yaml(cfg))
    torch.save({"model": model.state_dict()}, out / TINY_CHECKPOINT)
    return out
