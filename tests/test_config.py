"""DecafConfig: the reference defaults, overridden by DECAF_* variables and explicit values."""

from __future__ import annotations

import pytest

from decaf_backend.config import DecafConfig
from decaf_backend.errors import DecafError


def test_environment_then_explicit_overrides() -> None:
    env = {"DECAF_POINT_THRESHOLD": "0.7", "DECAF_ROLLOUT_START_LAYER": "3", "DECAF_NUM_KEY_FRAMES": ""}
    cfg = DecafConfig.from_env(env, final_score_threshold=0.9, num_key_frames=None)
    assert (cfg.point_threshold, cfg.rollout_start_layer, cfg.final_score_threshold) == (0.7, 3, 0.9)
    assert cfg.num_key_frames == DecafConfig().num_key_frames  # empty and None keep the default
    assert DecafConfig.from_env({}) == DecafConfig()


def test_a_bad_value_names_the_variable() -> None:
    with pytest.raises(DecafError, match="DECAF_FRAME_BATCH_SIZE='many'"):
        DecafConfig.from_env({"DECAF_FRAME_BATCH_SIZE": "many"})
