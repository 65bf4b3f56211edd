"""Mask previews and indexed PNGs: DAVIS palette colours, overlay videos/GIFs with points and a caption, and the
video/GIF writer they use (PyAV, PIL)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import VideoError
from .video import as_rgb

GIF_MAX_SIDE = 640  # GIFs of full-HD frames get huge; a preview does not need more


@lru_cache(maxsize=1)
def _palette() -> np.ndarray:
    # The DAVIS / PASCAL VOC colour map: bits of the index spread over the high bits of R, G and B.
    pal = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        c, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        pal[index] = (r, g, b)
    return pal


def davis_palette() -> np.ndarray:
    """(256, 3) uint8 DAVIS palette: 0 black, 1 (128,0,0), 2 (0,128,0), 3 (128,128,0), …"""
    return _palette().copy()


def save_indexed_png(path: str | Path, label_map: np.ndarray) -> Path:
    """Write an (H, W) label map (bool or ints 0..255) as a palette PNG with DAVIS colours."""
    labels = np.asarray(label_map)
    if labels.ndim != 2:
        raise ValueError(f"label map must be 2-D, got shape {labels.shape}")
    if labels.dtype != bool and labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError("label values must lie in 0..255 for an indexed PNG")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    img.putpalette(_palette().ravel().tolist())
    img.save(path)
    return path


def read_indexed_png(path: str | Path) -> np.ndarray:
    """(H, W) uint8 label map of a palette or grayscale PNG (the index, not the colour)."""
    with Image.open(path) as img:
        if img.mode not in ("P", "L", "1"):
            raise ValueError(f"{path}: expected a palette or grayscale PNG, got mode {img.mode}")
        return np.asarray(img, dtype=np.uint8)


# ------------------------------------------------------------------------------------------------ overlay


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)  # covers arrows and most scripts, unlike the default font
        except OSError:
            continue
    return ImageFont.load_default(size)


def colour(object_index: int) -> tuple[int, int, int]:
    """RGB colour of object `object_index` (0-based): DAVIS palette entry index + 1."""
    r, g, b = _palette()[(object_index % 255) + 1]
    return int(r), int(g), int(b)


def draw_masks(frame: np.ndarray, masks: Sequence[np.ndarray], alpha: float = 0.5) -> np.ndarray:
    """Blend each object's mask in its colour over an RGB frame and outline it."""
    out = np.asarray(frame, dtype=np.uint8).copy()
    for k, mask in enumerate(masks):
        m = np.asarray(mask) > 0
        if m.shape != out.shape[:2]:
            raise ValueError(f"mask {m.shape} does not match frame {out.shape[:2]}")
        if not m.any():
            continue
        col = np.array(colour(k), dtype=np.float32)
        out[m] = (out[m] * (1 - alpha) + col * alpha).astype(np.uint8)
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, colour(k), max(1, round(min(out.shape[:2]) / 200)))
    return out


def draw_points(frame: np.ndarray, points: Iterable[Mapping[str, Any]]) -> np.ndarray:
    """Mark points ({"x", "y"} px; optional "object" index, "positive") as outlined dots (negatives: crosses)."""
    out = np.ascontiguousarray(frame)
    radius = max(3, round(min(out.shape[:2]) / 80))
    for p in points:
        x, y = round(float(p["x"])), round(float(p["y"]))
        col = colour(int(p["object"])) if "object" in p else (255, 215, 0)
        if p.get("positive", True):
            cv2.circle(out, (x, y), radius + 1, (255, 255, 255), -1, cv2.LINE_AA)
            cv2.circle(out, (x, y), radius, col, -1, cv2.LINE_AA)
        else:
            cv2.drawMarker(
                out, (x, y), (255, 64, 64), cv2.MARKER_TILTED_CROSS, 2 * radius + 2, 2, cv2.LINE_AA
            )
    return out


def draw_caption(frame: np.ndarray, caption: str) -> np.ndarray:
    """Write the caption on a dark band at the top of the frame, wrapped to its width."""
    if not caption:
        return frame
    img = Image.fromarray(frame)
    size = max(12, round(img.width / 40))
    font = _font(size)
    draw = ImageDraw.Draw(img, "RGBA")
    lines, line = [], ""
    for word in caption.split():
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=font) > img.width - 2 * size // 2:
            lines.append(line)
            line = word
        else:
            line = trial
    lines.append(line)
    height = len(lines) * (size + 4) + 6
    draw.rectangle((0, 0, img.width, height), fill=(0, 0, 0, 150))
    for i, text in enumerate(lines):
        draw.text((size // 2, 3 + i * (size + 4)), text, font=font, fill=(255, 255, 255, 255))
    return np.asarray(img)


def overlay_frames(
    frames: Iterable[np.ndarray],
    masks_per_object: Sequence[Any],
    points: Sequence[Mapping[str, Any]] | None = None,
    caption: str = "",
    alpha: float = 0.5,
    max_side: int | None = None,
) -> Iterator[np.ndarray]:
    """Composed preview frames: masks (object k in DAVIS colour k+1), the points of that frame, the caption."""
    by_frame: dict[int, list[Mapping[str, Any]]] = {}
    for p in points or ():
        by_frame.setdefault(int(p["frame"]), []).append(p)
    for i, frame in enumerate(frames):
        out = draw_masks(frame, [obj[i] for obj in masks_per_object], alpha)
        out = draw_points(out, by_frame.get(i, ()))
        if max_side and max(out.shape[:2]) > max_side:
            scale = max_side / max(out.shape[:2])
            size = (max(2, round(out.shape[1] * scale)), max(2, round(out.shape[0] * scale)))
            out = cv2.resize(out, size, interpolation=cv2.INTER_AREA)
        yield draw_caption(out, caption)


def write_overlay(
    path: str | Path,
    frames_iter: Iterable[np.ndarray],
    masks_per_object: Sequence[Any],
    points: Sequence[Mapping[str, Any]] | None = None,
    caption: str = "",
    fps: float = 10.0,
    alpha: float = 0.5,
    max_side: int | None = None,
) -> Path:
    """Write an overlay preview: .mp4 / .webm / .gif … by the suffix of `path` (write_video).

    masks_per_object: one entry per object, each indexable by frame (FrameMasks, (T, H, W) array, list).
    points: {"frame", "x", "y"} in pixels (pipeline's VideoSegmentation.points), drawn on their frame.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if max_side is None and path.suffix.lower() == ".gif":
        max_side = GIF_MAX_SIDE
    return write_video(
        path, overlay_frames(frames_iter, masks_per_object, points, caption, alpha, max_side), fps
    )


# ------------------------------------------------------------------------------------------------ video files


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float = 10.0) -> Path:
    """Write HxWx3 uint8 frames (any iterable, consumed lazily for videos) as .gif (PIL) or a video file.

    .mp4/.m4v/.mov/.mkv use H.264 (libx264, yuv420p): odd frame sizes are padded by one edge pixel to even.
    .webm uses VP9. Returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fps = float(fps) if fps and fps > 0 else 10.0
    suffix = path.suffix.lower()
    if suffix == ".gif":
        _write_gif(path, frames, fps)
    elif suffix in (".mp4", ".m4v", ".mov", ".mkv", ".webm"):
        try:
            _write_av(path, frames, fps, "libvpx-vp9" if suffix == ".webm" else "libx264")
        except BaseException:
            path.unlink(missing_ok=True)  # no half-written or empty video left behind
            raise
    else:
        raise VideoError(f"cannot write {path.name}: use .mp4, .mov, .mkv, .webm or .gif")
    return path


def _write_gif(path: Path, frames: Iterable[np.ndarray], fps: float) -> None:
    images = [Image.fromarray(as_rgb(f)) for f in frames]
    if not images:
        raise VideoError(f"no frames to write to {path.name}")
    if any(im.size != images[0].size for im in images):
        raise VideoError(f"frames written to {path.name} must all have one size")
    duration = max(20, round(1000 / fps))  # GIF delays are in 10 ms steps; most viewers clamp below 20 ms
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration, loop=0)


def _write_av(path: Path, frames: Iterable[np.ndarray], fps: float, codec: str) -> None:
    import av

    rate = Fraction(fps).limit_denominator(1001)
    size: tuple[int, int] | None = None
    with av.open(str(path), mode="w") as container:
        stream = None
        for frame in frames:
            rgb = as_rgb(frame)
            if size is None:
                size = rgb.shape[:2]
                stream = container.add_stream(codec, rate=rate)
                # yuv420p halves chroma in both directions: H.264 needs even sizes (VP9 does not)
                even = codec == "libx264"
                stream.height = size[0] + (size[0] % 2 if even else 0)
                stream.width = size[1] + (size[1] % 2 if even else 0)
                stream.pix_fmt = "yuv420p"
            elif rgb.shape[:2] != size:
                raise VideoError(
                    f"frames written to {path.name} must all have one size: {rgb.shape[:2]} != {size}"
                )
            pad = ((0, stream.height - size[0]), (0, stream.width - size[1]), (0, 0))
            if pad[0][1] or pad[1][1]:
                rgb = np.pad(rgb, pad, mode="edge")
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        if stream is None:
            raise VideoError(f"no frames to write to {path.name}")
        container.mux(stream.encode())
