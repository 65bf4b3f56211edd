"""DecAF: training-free video reasoning segmentation (MLLM attention fusion + SAM2), served to Label Studio."""

__version__ = "0.1.0"
