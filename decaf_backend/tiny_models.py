"""`make-tiny-models`: random-weight Qwen2.5-VL, Qwen2-VL and SAM2 checkpoints in their real on-disk formats.

They let the CLI, the Label Studio backend and the tests take the real loading path on a machine without
a GPU or a model hub. Anything they produce is labelled as random-weight output.
"""

from __future__ import annotations

from pathlib import Path


def make_tiny_models(out_dir: Path, seed: int = 0) -> dict[str, Path]:
    from .mllm.tiny import build_tiny_qwen
    from .sam2_session import build_tiny_sam2

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return {
        "qwen2_5_vl": build_tiny_qwen("qwen2_5_vl", out_dir / "qwen2_5_vl", seed=seed),
        "qwen2_vl": build_tiny_qwen("qwen2_vl", out_dir / "qwen2_vl", seed=seed),
        "sam2": build_tiny_sam2(out_dir / "sam2", seed=seed),
    }
