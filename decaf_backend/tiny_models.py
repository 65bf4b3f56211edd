"""`make-tiny-models`: random-weight Qwen2.5-VL, Qwen2-VL and SAM2 checkpoints in their real on-disk formats.

They let the CLI, the Label Studio backend and the tests take the real loading path on a machine without
a GPU or a model hub. Anything they produce is labelled as random-weight output.
"""

from __future__ import annotations

from pathlib import Path

# Random attention often puts more mass on the (shorter) background prompt's visual tokens everywhere, so
# object − background is 0 and no point survives: SAM2 would never run. These seeds were picked because
# their random attention leaves a positive contrast on small synthetic clips, which exercises every stage.
DEFAULT_SEEDS = {"qwen2_5_vl": 1, "qwen2_vl": 2, "sam2": 0}


def make_tiny_models(out_dir: Path, seed: int | None = None) -> dict[str, Path]:
    from .mllm.tiny import build_tiny_qwen
    from .sam2.tiny import build_tiny_sam2

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds = {name: DEFAULT_SEEDS[name] if seed is None else seed for name in DEFAULT_SEEDS}
    return {
        "qwen2_5_vl": build_tiny_qwen("qwen2_5_vl", out_dir / "qwen2_5_vl", seed=seeds["qwen2_5_vl"]),
        "qwen2_vl": build_tiny_qwen("qwen2_vl", out_dir / "qwen2_vl", seed=seeds["qwen2_vl"]),
        "sam2": build_tiny_sam2(out_dir / "sam2", seed=seeds["sam2"]),
    }
