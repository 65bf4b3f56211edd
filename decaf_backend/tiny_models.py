"""`make-tiny-models`: random-weight MLLM checkpoints of every supported family, and SAM2, in their real formats.

They let the CLI, the Label Studio backend and the tests take the real loading path on a machine without
a GPU or a model hub. Anything they produce is labelled as random-weight output.
"""

from __future__ import annotations

from pathlib import Path

# Random attention often puts more mass on the (shorter) background prompt's visual tokens everywhere, so
# object − background is 0 and no point survives: SAM2 would never run. These seeds were picked because
# their random attention leaves a positive contrast on small synthetic clips, which exercises every stage.
DEFAULT_SEEDS = {
    "qwen2_5_vl": 1,
    "qwen2_vl": 2,
    "internvl3": 0,
    "llava_onevision": 0,
    "qwen3_vl": 1,
    "sam2": 0,
}


def make_tiny_models(out_dir: Path, seed: int | None = None) -> dict[str, Path]:
    from .mllm.tiny_families import build_tiny_mllm
    from .sam2.tiny import build_tiny_sam2

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds = {name: DEFAULT_SEEDS[name] if seed is None else seed for name in DEFAULT_SEEDS}
    paths = {
        kind: build_tiny_mllm(kind, out_dir / kind, seed=s) for kind, s in seeds.items() if kind != "sam2"
    }
    paths["sam2"] = build_tiny_sam2(out_dir / "sam2", seed=seeds["sam2"])
    return paths
