"""Errors users see: each names the problem in plain words (no deep library tracebacks)."""


class DecafError(ValueError):
    """Base of every error this package raises on bad input or missing models."""


class VideoError(DecafError):
    """The video cannot be read: missing, unreadable, empty, too long or too large."""


class PromptError(DecafError):
    """The text prompt is missing or unusable."""


class PromptOutOfRangeError(DecafError):
    """A click or box lies outside the frame or the video."""


class ModelNotFoundError(DecafError):
    """Model weights are neither local nor downloadable."""
