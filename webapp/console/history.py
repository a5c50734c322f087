"""Console history: per-minute statistics charts for every task type or one, and a task type's page.

``/history`` answers the overview's history section (htmx swaps it when the range changes, and
refreshes it every minute) and is a page of its own without JavaScript. ``/task-types/<type>``
is one task type's page: its processor, queue latency now, and its history. The figures come
from ``tasks/history_query.py`` (the ``task_stat`` table), never from a scan of the tasks.
"""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, request
from werkzeug.exceptions import NotFound

from ..tasks import stats
from ..tasks.errors import ValidationError
from ..tasks.history_query import RANGES, parse_range, queue_latency, series
from ..tasks.models import utcnow
from .auth import protected_blueprint
from .history_charts import format_ms, history_charts, step_label
from .responses import error_response, render

bp = protected_blueprint("history", __name__)

FRAGMENTS = {"history": "partials/history.html"}


def _known_task_type(task_type: str) -> bool:
    registry = current_app.extensions["async_task"].registry
    return task_type in registry.task_types() or task_type in stats.task_types_present()


def history_context(task_type: str | None) -> dict[str, Any]:
    """What ``partials/history.html`` draws for the range in the URL (ValidationError naming ``range``)."""
    chosen = parse_range(request.args.get("range"))
    data = series(chosen, task_type)
    # All types: the queue latency of each registered type too (one short index read per type).
    latency = {} if task_type is not None else queue_latency(current_app.extensions["async_task"].registry.task_types())
    return {"history": data, "charts": history_charts(data), "ranges": list(RANGES), "step": step_label(data),
            "format_ms": format_ms, "history_type": task_type, "latency_by_type": latency}


@bp.get("/history")
def history() -> Response:
    """Charts of every type (or of ``task_type``) over ``range``: 1h, 24h, 7d or 30d."""
    task_type = request.args.get("task_type") or None
    if task_type is not None and (len(task_type) > 100 or not _known_task_type(task_type)):
        raise NotFound()
    try:
        context = history_context(task_type)
    except ValidationError as exc:
        return error_response(400, f"{exc.field}: {exc.message}")
    return render("history.html", FRAGMENTS, **context)


@bp.get("/task-types/<task_type>")
def task_type_page(task_type: str) -> Response:
    """One task type: its processor and retry policy, its queue latency now, and its history."""
    if len(task_type) > 100 or not _known_task_type(task_type):
        raise NotFound()
    try:
        context = history_context(task_type)
    except ValidationError as exc:
        return error_response(400, f"{exc.field}: {exc.message}")
    processor = current_app.extensions["async_task"].registry.get(task_type)
    now = utcnow()
    latency = queue_latency([task_type], now)[task_type]
    return render("task_type_detail.html", FRAGMENTS, task_type=task_type, processor=processor,
                  retry=processor.get_retry_config() if processor is not None else None,
                  latency=latency, checked_at=now, **context)
