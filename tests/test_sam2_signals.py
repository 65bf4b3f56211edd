"""SAM2's per-frame signals (object score, predicted IoU) on a tiny random-weight SAM2, and the per-frame
confidence made from them in stage B and after a correction's re-propagation."""

from __future__ import annotations

import numpy as np
import pytest

from decaf_backend.confidence import ConfidenceRecorder, frame_confidence
from decaf_backend.pipeline import CorrectionSession
from decaf_backend.sam2.loading import load_sam2_predictor
from decaf_backend.sam2.predictor import Sam2VideoPredictor
from decaf_backend.sam2.tiny import build_tiny_sam2
from decaf_backend.tracking import binarize_logits, run_stage_b
from decaf_backend.types import Click

N, H, W = 7, 48, 64


def squares(n: int = N) -> list[np.ndarray]:
    frames = np.full((n, H, W, 3), 40, dtype=np.uint8)
    for i in range(n):
        frames[i, 14:30, 4 + 6 * i : 20 + 6 * i] = (230, 200, 30)
    return list(frames)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Sam2VideoPredictor:
    return load_sam2_predictor(build_tiny_sam2(tmp_path_factory.mktemp("sam2") / "sam2"), device="cpu")


def _prompt(frame: int) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[14:30, 4 + 6 * frame : 20 + 6 * frame] = True
    return mask


def test_signals_are_the_decoders_own_values_on_every_frame(predictor, monkeypatch) -> None:
    decoder = predictor.model.sam_mask_decoder
    decoded = []
    original = decoder.forward

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)  # (masks, ious (B, M), tokens, object score logits (B, 1))
        decoded.append((float(out[1].max()), float(out[3].reshape(-1)[0])))
        return out

    state = predictor.init_state(squares())
    predictor.add_new_mask(state, 2, 7, _prompt(2))
    assert predictor.frame_signals(state, 2) == {7: (10.0, 1.0)}  # sam2's values for a mask given as output
    assert predictor.frame_signals(state, 3) == {}
    monkeypatch.setattr(decoder, "forward", spy)
    order = []
    for f, _, _ in predictor.propagate_in_video(state, 2, N - 2, False):
        order.append(f)
    assert order == [2, 3, 4, 5, 6] and len(decoded) == 4  # the prompted frame is not decoded again
    for f, (iou, score) in zip(order[1:], decoded):
        logit, got_iou = predictor.frame_signals(state, f)[7]
        assert (logit, got_iou) == pytest.approx((score, iou), abs=1e-5)
    predictor.reset_state(state)
    assert predictor.frame_signals(state, 3) == {}


def test_stage_b_confidence_is_per_frame_in_unit_range_and_follows_the_signals(predictor) -> None:
    frames = squares()
    recorder = ConfidenceRecorder(predictor, N)
    seen: dict[int, float] = {}
    masks = run_stage_b(predictor, frames, [3, 3], [_prompt(3), _prompt(2)], recorder)
    conf = recorder.result()
    assert conf is not None and len(conf) == N and all(0.0 <= c <= 1.0 for c in conf)
    assert len({round(c, 6) for c in conf}) > 2, f"all frames got one confidence: {conf}"
    # recompute from the signals of one more propagation in the same way: the weakest object counts
    state = predictor.init_state(frames)
    predictor.add_new_mask(state, 3, 100, _prompt(3))
    predictor.add_new_mask(state, 3, 101, _prompt(2))
    for direction in ((3, N - 3, False), (2, 3, True)):
        for f, obj_ids, logits in predictor.propagate_in_video(state, *direction):
            binary = binarize_logits(logits)
            signals = predictor.frame_signals(state, f)
            seen[f] = min(frame_confidence(*signals[o], binary[i].any()) for i, o in enumerate(obj_ids))
    assert [seen[f] for f in range(N)] == pytest.approx(conf, abs=1e-6)
    assert masks[3].any()


def test_a_correction_brings_new_per_frame_confidence(predictor) -> None:
    session = CorrectionSession(predictor, squares(), {2: _prompt(2)})
    assert session.masks.num_frames == N  # the starting state, propagated
    before = list(session.confidence)
    assert len(before) == N and before[2] == pytest.approx(frame_confidence(10.0, 1.0, True))
    session.extend([Click(5, 36.0, 22.0, True), Click(5, 60.0, 40.0, False)])
    after = session.confidence
    assert after is not None and len(after) == N and all(0.0 <= c <= 1.0 for c in after)
    assert after[5] != pytest.approx(before[5]), "the clicked frame's confidence is its click's decode"
