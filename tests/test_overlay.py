"""Overlay previews (GIF / MP4) and DAVIS-palette indexed PNGs."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from decaf_backend.overlay import (
    colour,
    davis_palette,
    draw_caption,
    overlay_frames,
    read_indexed_png,
    save_indexed_png,
    write_overlay,
)
from decaf_backend.types import FrameMasks

from .synthetic_rvos import scene


def test_davis_palette_first_entries():
    pal = davis_palette()
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    assert pal[:5].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]]
    assert colour(0) == (128, 0, 0) and colour(1) == (0, 128, 0)


def test_indexed_png_round_trip(tmp_path):
    label = np.zeros((7, 9), np.uint8)
    label[1:3, 2:5], label[4:6, 6:8] = 1, 2
    path = save_indexed_png(tmp_path / "a" / "00000.png", label)
    img = Image.open(path)
    assert img.mode == "P" and img.getpalette()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]
    np.testing.assert_array_equal(read_indexed_png(path), label)
    np.testing.assert_array_equal(
        read_indexed_png(save_indexed_png(tmp_path / "b.png", label > 0)), label > 0
    )
    with pytest.raises(ValueError):
        save_indexed_png(tmp_path / "c.png", np.full((2, 2), 300))


def test_overlay_colours_masks_marks_points_and_writes_gif_and_mp4(tmp_path):
    frames, objects = scene(4, 2)
    masks = [FrameMasks.from_array(objects[1]), objects[2]]
    points = [{"frame": 1, "x": 5.0, "y": 6.0, "value": 0.9}]
    out = list(overlay_frames(frames, masks, points))
    assert len(out) == 4 and out[0].shape == frames[0].shape
    inside = objects[1][0] & ~objects[2][0]
    assert not np.array_equal(out[0][inside], frames[0][inside])  # tinted
    near = cv2.dilate((objects[1][3] | objects[2][3]).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    np.testing.assert_array_equal(out[3][~near], frames[3][~near])  # away from masks and outlines: untouched
    assert not np.array_equal(out[1][6, 5], frames[1][6, 5])  # the point

    gif = write_overlay(tmp_path / "o.gif", iter(frames), masks, points, caption="the box → box", fps=5)
    with Image.open(gif) as img:
        assert img.n_frames == 4 and img.size == (32, 24)
    mp4 = write_overlay(tmp_path / "o.mp4", iter(frames), masks, fps=5)
    import av

    with av.open(str(mp4)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 4


def test_caption_band_and_downscale():
    frame = np.full((100, 200, 3), 200, np.uint8)
    captioned = draw_caption(frame, "a very long caption " * 6)
    assert captioned[2, 2].mean() < 200 and captioned[-1, -1].tolist() == [200, 200, 200]
    (small,) = overlay_frames([frame], [np.zeros((1, 100, 200), bool)], max_side=50)
    assert small.shape == (25, 50, 3)
