"""Backend settings from the environment."""

from __future__ import annotations

import pytest

from decaf_backend.backend.settings import Settings
from decaf_backend.errors import DecafError


def test_tiny_test_models_label_their_predictions_as_random_weights(tiny_models) -> None:
    real = Settings.from_env({})
    assert "random" not in real.model_version
    for key, model in (("DECAF_MLLM", "qwen2_5_vl"), ("DECAF_SAM2", "sam2")):
        assert (
            Settings.from_env({key: str(tiny_models[model])}).model_version
            == f"{real.model_version}-random-weights"
        )
    explicit = Settings.from_env({"DECAF_MLLM": str(tiny_models["qwen2_5_vl"]), "MODEL_VERSION": "mine"})
    assert explicit.model_version == "mine"


def test_bad_values_name_the_variable() -> None:
    with pytest.raises(DecafError, match="DECAF_OPEN_WAIT_S='soon'"):
        Settings.from_env({"DECAF_OPEN_WAIT_S": "soon"})
