"""The Flask app: Label Studio's ML backend routes /health, /setup, /predict, /webhook, plus /metrics.

Basic auth (BASIC_AUTH_USER/PASS) guards every route but /health. Label Studio sends annotation webhooks without it,
so /webhook also accepts the header `X-Webhook-Secret: $WEBHOOK_SECRET` (set it on the webhook in Label Studio).
Errors come back as JSON `{"error": "..."}` with 400 (malformed request), 422 (unusable task/prompt/clicks) or 500.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from ..errors import DecafError
from .errors import LabelConfigError, RequestError
from .model import DecafVideoModel, project_id_of
from .runtime import Runtime, get_runtime, set_runtime
from .settings import Settings, check_serving_access

log = logging.getLogger(__name__)
WEBHOOK_SECRET_HEADER = "X-Webhook-Secret"


def create_app(
    runtime: Runtime | None = None, model_class: Callable[..., DecafVideoModel] = DecafVideoModel
) -> Flask:
    """The WSGI app. `runtime` defaults to the process singleton made from the environment."""
    if runtime is not None:
        set_runtime(runtime)
    runtime = runtime or get_runtime()
    settings = runtime.settings
    app = Flask("decaf_backend")
    app.json.sort_keys = False

    @app.before_request
    def check_auth() -> Any:
        request.environ["decaf.start"] = time.perf_counter()
        if request.path == "/health" or not settings.basic_auth_user:
            return None
        if request.path == "/webhook" and settings.webhook_secret:
            given = request.headers.get(WEBHOOK_SECRET_HEADER, "")
            if given and hmac.compare_digest(given, settings.webhook_secret):
                return None
        auth = request.authorization
        if (
            auth is not None
            and auth.type == "basic"
            and hmac.compare_digest(auth.username or "", settings.basic_auth_user)
            and hmac.compare_digest(auth.password or "", settings.basic_auth_pass)
        ):
            return None
        runtime.metrics.inc("unauthorized_total", route=_route())
        return Response(
            '{"error": "authentication required"}',
            401,
            {"WWW-Authenticate": 'Basic realm="decaf"', "Content-Type": "application/json"},
        )

    @app.after_request
    def count(response: Response) -> Response:
        start = request.environ.get("decaf.start")
        runtime.metrics.inc("requests_total", route=_route(), status=str(response.status_code))
        if start is not None:
            runtime.metrics.inc("request_seconds_total", time.perf_counter() - start, route=_route())
        return response

    @app.errorhandler(Exception)
    def on_error(exc: Exception) -> Any:
        if isinstance(exc, HTTPException):
            return jsonify(error=exc.description), exc.code
        if isinstance(exc, (RequestError, LabelConfigError)):
            status = 400
        elif isinstance(exc, DecafError):
            status = 422
        else:
            log.exception("unexpected error on %s", request.path)
            status = 500
        log.warning("%s %s -> %d: %s", request.method, request.path, status, exc)
        return jsonify(error=str(exc) or type(exc).__name__), status

    @app.get("/health")
    def health() -> Any:
        return jsonify(
            status="UP",
            model_class=model_class.__name__,
            model_version=settings.model_version,
            model_loaded=runtime.pipeline_loaded,
            load_error=runtime.load_error,
        )

    @app.post("/setup")
    def setup() -> Any:
        body = _json_body()
        project = project_id_of(body.get("project"))
        hostname, token = _text(body, "hostname"), _text(body, "access_token")
        runtime.remember_setup(project, hostname, token)
        model = model_class(project, _text(body, "schema"), runtime=runtime)
        return jsonify(model_version=model.model_version)

    @app.post("/predict")
    def predict() -> Any:
        body = _json_body()
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not tasks:
            raise RequestError("'tasks' must be a non-empty list of Label Studio tasks")
        for task in tasks:
            _check_task(task)
        params = body.get("params") or {}
        if not isinstance(params, dict):
            raise RequestError("'params' must be an object")
        model = model_class(body.get("project"), _text(body, "label_config"), runtime=runtime)
        results = model.predict(tasks, context=params.get("context"))
        runtime.metrics.inc("tasks_requested_total", len(tasks))
        return jsonify(results=results, model_version=model.model_version)

    @app.post("/webhook")
    def webhook() -> Any:
        body = _json_body()
        event = body.get("action")
        if not isinstance(event, str):
            raise RequestError("a webhook body needs an 'action'")
        project = body.get("project") if isinstance(body.get("project"), dict) else {}
        if isinstance(body.get("task"), dict):
            _check_task(body["task"])
        _check_lists(body, "annotation")
        model = model_class(project.get("id"), _text(project, "label_config"), runtime=runtime)
        return jsonify(model.fit(event, body)), 201

    @app.get("/metrics")
    def metrics() -> Any:
        return Response(runtime.metrics.render(runtime.gauges()), mimetype="text/plain; version=0.0.4")

    return app


def _route() -> str:
    """The matched route for metric labels: any path a client sends would grow /metrics without bound."""
    return request.url_rule.rule if request.url_rule is not None else "unmatched"


def _check_task(task: Any) -> None:
    """The shape of a Label Studio task, checked here so that the model code can rely on it."""
    if not isinstance(task, dict):
        raise RequestError("each task must be a JSON object")
    task_id = task.get("id")
    if isinstance(task_id, bool) or not isinstance(task_id, int):
        raise RequestError(f"each task needs an integer 'id', not {_brief(task_id)}")
    if not isinstance(task.get("data", {}), dict):
        raise RequestError(f"task {task_id}: 'data' must be an object")
    for name in ("predictions", "annotations", "drafts"):
        items = task.get(name) or []
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise RequestError(f"task {task_id}: '{name}' must be a list of objects")
        for item in items:
            _check_lists(item, None)


def _check_lists(body: dict[str, Any], key: str | None) -> None:
    """An annotation or prediction (body[key], or body itself): an object whose 'result' is a list of objects."""
    item = body.get(key) if key else body
    if item is None:
        return
    if not isinstance(item, dict):
        raise RequestError(f"'{key}' must be an object")
    result = item.get("result") or []
    if not isinstance(result, list) or not all(isinstance(r, dict) for r in result):
        raise RequestError("an annotation's or prediction's 'result' must be a list of objects")


def _text(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise RequestError(f"'{key}' must be a string")
    return value


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _json_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    return body


def serve(settings: Settings, runtime: Runtime | None = None) -> None:
    """Run the app in one process with threads (sessions live in this process; see runtime.py)."""
    from werkzeug.serving import make_server

    warning = check_serving_access(settings)  # raises AccessError before anything listens
    if warning:
        log.warning("%s", warning)
    runtime = runtime or Runtime(settings)
    if settings.preload:
        runtime.preload_in_background()
    app = create_app(runtime)
    server = make_server(settings.host, settings.port, app, threaded=True)
    log.info(
        "DecAF ML backend on http://%s:%d (model version %s)",
        settings.host,
        settings.port,
        settings.model_version,
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()
