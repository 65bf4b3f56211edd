"""Errors of the Label Studio side; all are DecafError (ValueError-compatible) so the CLI and server report them."""

from ..errors import DecafError, VideoError


class LabelConfigError(DecafError):
    """The project's labeling config has no layout this backend can fill."""


class RequestError(DecafError):
    """A request from Label Studio is malformed (bad JSON, unknown label, wrong context shape)."""


class MediaError(VideoError):
    """The task's media cannot be downloaded or is over the size/duration limits."""
