"""Fuzzing /predict, /setup and /webhook (hypothesis): every reply is JSON with a 2xx or 4xx status, never a 5xx or
a crash, and the server answers /health after each. Bounded in examples and time (derandomized: the same
examples on every run, no example database written)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from decaf_backend.backend.runtime import Runtime
from decaf_backend.backend.server import create_app
from decaf_backend.backend.settings import Settings
from tests.backend_helpers import ColourSegmenter, FakeLabelStudio, disc_and_square_frames, write_frames

CONFIGS = Path(__file__).resolve().parents[1] / "label_config"
LABEL_CONFIGS = [p.read_text() for p in sorted(CONFIGS.glob("*.xml"))]
FUZZ = settings(
    max_examples=60,
    deadline=timedelta(seconds=10),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
urls = st.sampled_from(
    [
        "/data/local-files/?d=clip/f0000.png",
        "/data/local-files/?d=../../etc/passwd",
        "/data/upload/1/missing.mp4",
        "http://127.0.0.1:1/x.mp4",
        "http://169.254.169.254/latest/meta-data/",
        "s3://bucket/key.mp4",
        "file:///etc/passwd",
        "",
    ]
) | st.text(max_size=30)
numbers = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**9), 10**9) | st.text(max_size=5)
result_items = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            ["keypointlabels", "rectanglelabels", "videorectangle", "textarea", "brushlabels"]
        )
        | st.text(max_size=10),
        "from_name": st.sampled_from(["click", "mask", "box", "prompt", "x"]),
        "to_name": st.sampled_from(["image", "video", "x"]),
        "value": st.fixed_dictionaries(
            {},
            optional={
                "x": numbers,
                "y": numbers,
                "width": numbers,
                "height": numbers,
                "labels": st.lists(st.text(max_size=8), max_size=2),
                "keypointlabels": st.lists(st.sampled_from(["Object", "Negative", "Cat"]), max_size=2),
                "sequence": st.lists(
                    st.fixed_dictionaries(
                        {
                            "frame": numbers,
                            "x": numbers,
                            "y": numbers,
                            "width": numbers,
                            "height": numbers,
                            "enabled": json_values,
                        }
                    ),  # fmt: skip
                    max_size=3,
                ),
                "text": st.lists(st.text(max_size=20), max_size=2) | json_values,
                "framesCount": numbers,
            },
        )
        | json_values,
    },
    optional={
        "item_index": numbers,
        "original_width": numbers,
        "original_height": numbers,
        "is_positive": json_values,
        "id": json_values,
    },
)
tasks = st.fixed_dictionaries(
    {
        "id": st.integers(0, 10**6) | json_values,
        "data": st.fixed_dictionaries(
            {},
            optional={
                "frames": st.lists(urls, max_size=3) | json_values,
                "video": urls | json_values,
                "prompt": st.text(max_size=20) | json_values,
            },
        )
        | json_values,
    },
    optional={
        "predictions": st.lists(json_values, max_size=2),
        "annotations": st.lists(json_values, max_size=2),
    },
)
predict_bodies = st.fixed_dictionaries(
    {
        "tasks": st.lists(tasks, max_size=3) | json_values,
        "label_config": st.sampled_from(LABEL_CONFIGS) | st.text(max_size=40),
    },
    optional={
        "project": json_values,
        "params": st.fixed_dictionaries(
            {"context": st.fixed_dictionaries({"result": st.lists(result_items, max_size=3)})}
        )
        | json_values,
    },
)
setup_bodies = st.fixed_dictionaries(
    {},
    optional={
        "project": json_values,
        "schema": st.sampled_from(LABEL_CONFIGS) | st.text(max_size=40) | json_values,
        "hostname": urls | json_values,
        "access_token": st.text(max_size=20) | json_values,
        "model_version": json_values,
    },
)
webhook_bodies = st.fixed_dictionaries(
    {
        "action": st.sampled_from(["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "START_TRAINING", "X"])
        | json_values,
    },
    optional={
        "project": st.fixed_dictionaries({"id": json_values, "label_config": st.sampled_from(LABEL_CONFIGS)})
        | json_values,
        "annotation": st.fixed_dictionaries(
            {"id": json_values, "task": json_values, "result": st.lists(result_items, max_size=3)}
        )
        | json_values,
        "task": tasks | json_values,
    },
)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("fuzz_media")
    write_frames(root / "clip", disc_and_square_frames(3, 24, 32))
    fake = FakeLabelStudio(root)
    settings_ = Settings(
        label_studio_url=fake.url,
        label_studio_api_key=fake.token,
        model_dir=tmp_path_factory.mktemp("fuzz_model_dir"),
        preload=False,
        open_wait_s=0.2,
        batch_wait_s=0.2,
        interactive_wait_s=0.2,
        download_timeout_s=2.0,
    )
    runtime = Runtime(settings_, pipeline_factory=lambda s: ColourSegmenter())
    yield create_app(runtime).test_client()
    fake.close()


def _check(reply: Any, client: Any) -> None:
    assert 200 <= reply.status_code < 500, (reply.status_code, reply.get_data(as_text=True)[:500])
    assert reply.is_json and isinstance(reply.get_json(), dict)
    assert client.get("/health").status_code == 200


@FUZZ
@given(body=predict_bodies)
def test_predict_payloads(client: Any, body: dict) -> None:
    _check(client.post("/predict", json=body), client)


@FUZZ
@given(body=setup_bodies)
def test_setup_payloads(client: Any, body: dict) -> None:
    _check(client.post("/setup", json=body), client)


@FUZZ
@given(body=webhook_bodies)
def test_webhook_payloads(client: Any, body: dict) -> None:
    _check(client.post("/webhook", json=body), client)


@settings(FUZZ, max_examples=40)
@given(
    route=st.sampled_from(["/predict", "/setup", "/webhook"]),
    data=st.binary(max_size=200) | json_values.map(json.dumps),
)
def test_raw_bodies(client: Any, route: str, data: Any) -> None:
    _check(client.post(route, data=data, content_type="application/json"), client)


def test_unknown_paths_do_not_grow_metrics(client: Any) -> None:
    for i in range(5):
        assert client.get(f"/no/such/path/{i}").status_code == 404
    text = client.get("/metrics").get_data(as_text=True)
    assert "/no/such" not in text and 'route="unmatched",status="404"} 5' in text
