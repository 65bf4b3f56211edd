"""DecAF end to end on tiny models, then annotator corrections on the live SAM2 session."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from decaf_backend.errors import PromptError, PromptOutOfRangeError
from decaf_backend.pipeline import DecafPipeline
from decaf_backend.types import Box, Click
from decaf_backend.video import open_video


class CountingAdapter:
    """Wraps the real adapter to count MLLM calls (corrections must not run the MLLM)."""

    def __init__(self, adapter):
        self.adapter, self.calls = adapter, 0

    def __getattr__(self, name):
        attr = getattr(self.adapter, name)
        if callable(attr):

            def counted(*args, **kwargs):
                self.calls += 1
                return attr(*args, **kwargs)

            return counted
        return attr


@pytest.fixture(scope="module")
def pipeline(tiny_models):
    pipe = DecafPipeline.from_pretrained(str(tiny_models["qwen2_5_vl"]), str(tiny_models["sam2"]))
    pipe.mllm = CountingAdapter(pipe.mllm)
    return pipe


@pytest.fixture(scope="module")
def segmentation(pipeline, synthetic_video):
    return pipeline.segment(synthetic_video, "the red ball rolling to the right")


def test_segment_gives_masks_on_every_frame(segmentation, synthetic_video):
    reader = open_video(synthetic_video)
    info = reader.info
    assert segmentation.random_weights
    assert len(segmentation.masks) == info.num_frames
    assert all(m.shape == (info.height, info.width) for m in segmentation.masks)
    assert segmentation.coarse_masks.shape == (len(segmentation.key_frame_indices), info.height, info.width)
    assert segmentation.points and segmentation.prompt_frames
    assert set(segmentation.prompt_frames) <= set(segmentation.key_frame_indices)
    assert 0.0 <= segmentation.score <= 1.0
    assert sum(int(m.sum()) for m in segmentation.masks) > 0, (
        "the tiny SAM2 gives non-empty masks from prompts"
    )


def test_clicks_on_a_middle_frame_refine_all_frames_without_the_mllm(pipeline, segmentation):
    calls_before = pipeline.mllm.calls
    info = segmentation.video
    middle = info.num_frames // 2
    before = segmentation.masks[middle]
    # a negative click inside the current mask (or anywhere) and a positive one elsewhere
    ys, xs = (
        np.nonzero(before) if before.any() else (np.array([info.height // 2]), np.array([info.width // 2]))
    )
    neg = Click(middle, float(xs[len(xs) // 2]) + 0.5, float(ys[len(ys) // 2]) + 0.5, positive=False)
    pos = Click(middle, info.width * 0.1, info.height * 0.1, positive=True)
    live = replace(segmentation, session=pipeline.start_session(segmentation))
    refined = pipeline.refine(live, [pos, neg])

    assert pipeline.mllm.calls == calls_before
    assert len(refined.masks) == info.num_frames
    assert not np.array_equal(refined.masks[middle], before)
    assert refined.session.prompts == [pos, neg]
    assert "refine" in refined.timings

    # resending the same clicks (as Label Studio does) adds nothing and changes nothing
    again = pipeline.refine(refined, [pos, neg])
    assert again.session.prompts == [pos, neg]
    assert all(np.array_equal(a, b) for a, b in zip(again.masks, refined.masks))


def _same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a.masks, b.masks))


def test_a_rebuilt_session_gives_what_the_live_one_gives(pipeline, synthetic_video):
    """The live session segment() made and one rebuilt from the stored segmentation (no session, as after a
    restart) answer the same prompts with the same masks; so do one-at-a-time and all-at-once prompts."""
    seg = pipeline.segment(synthetic_video, "the red ball rolling to the right")  # its own live session
    info = seg.video
    middle = info.num_frames // 2
    prompts = [
        Click(middle, info.width * 0.5, info.height * 0.5),
        Click(middle, 3.0, 3.0, positive=False),
        Box(middle + 2, 10, 10, info.width / 2, info.height / 2),
    ]
    live = seg
    for k in range(1, len(prompts) + 1):  # incremental: each request carries one more prompt
        live = pipeline.correct(live, prompts[:k])
    assert live.session is seg.session and live.session.prompts == prompts
    rebuilt = pipeline.correct(replace(seg, session=None), prompts, video=synthetic_video)
    assert rebuilt.session is not seg.session and _same(live, rebuilt)
    # undo: a request without the last prompt answers from the starting state, not from the live one
    undone = pipeline.correct(live, prompts[:2], video=synthetic_video)
    fresh = pipeline.correct(replace(seg, session=None), prompts[:2], video=synthetic_video)
    assert undone.session is not live.session and _same(undone, fresh)
    assert pipeline.correct(seg, []) is seg  # no prompt: the segmentation as it is, no SAM2 call


def test_bad_prompts_and_clicks_are_refused(pipeline, segmentation, synthetic_video):
    with pytest.raises(PromptError, match="empty"):
        pipeline.segment(synthetic_video, "  ")
    info = segmentation.video
    with pytest.raises(PromptOutOfRangeError, match="outside"):
        pipeline.refine(segmentation, [Click(0, info.width + 5, 1)])
    with pytest.raises(PromptOutOfRangeError, match="outside the video"):
        pipeline.refine(segmentation, [Click(info.num_frames, 1, 1)])
    with pytest.raises(PromptOutOfRangeError, match="no area"):
        pipeline.refine(segmentation, boxes=[Box(0, 10, 10, 5, 20)])


def _fake_session(predictor=None):
    from decaf_backend.pipeline import CorrectionSession
    from tests.fakes import BlankFrames, FakeSam2Predictor

    frames = BlankFrames(7, 24, 32)
    start = np.zeros((24, 32), bool)
    start[8:14, 4:10] = True
    return CorrectionSession(predictor or FakeSam2Predictor(radius=3.0), frames, {2: start})


def test_one_prompt_more_continues_the_state_and_equals_all_at_once_with_the_fake_predictor():
    prompts = [Click(2, 20.0, 10.0), Click(4, 6.0, 11.0, positive=False), Box(5, 2, 2, 12, 12)]
    live = _fake_session()
    for k in range(1, 4):
        masks = live.extend(prompts[k - 1 : k])
        fresh = _fake_session()
        np.testing.assert_array_equal(masks.to_array(), fresh.extend(prompts[:k]).to_array())
    assert live.prompts == prompts
    other = _fake_session().extend([prompts[1]])  # another sequence: not the same masks
    assert not np.array_equal(other.to_array(), live.masks.to_array())


def test_a_prompt_that_failed_to_propagate_is_not_recorded():
    from tests.fakes import FakeSam2Predictor

    class Flaky(FakeSam2Predictor):
        fail = False

        def propagate_in_video(self, *args, **kwargs):
            if self.fail:
                raise RuntimeError("device lost")
            yield from super().propagate_in_video(*args, **kwargs)

    predictor = Flaky(radius=3.0)
    session = _fake_session(predictor)
    session.extend([Click(2, 20.0, 10.0)])
    predictor.fail = True
    with pytest.raises(RuntimeError, match="device lost"):
        session.extend([Click(3, 5.0, 5.0)])
    assert session.prompts == []  # nothing recorded as applied; the state starts over
    predictor.fail = False
    again = session.extend([Click(2, 20.0, 10.0), Click(3, 5.0, 5.0)])
    fresh = _fake_session().extend([Click(2, 20.0, 10.0), Click(3, 5.0, 5.0)])
    np.testing.assert_array_equal(again.to_array(), fresh.to_array())
