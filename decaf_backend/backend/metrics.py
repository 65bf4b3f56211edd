"""Counters for GET /metrics in the Prometheus text format (no extra dependency)."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Mapping


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        with self._lock:
            self._counters[(name, tuple(sorted(labels.items())))] += value

    def render(self, gauges: Mapping[str, float]) -> str:
        lines = []
        with self._lock:
            items = sorted(self._counters.items())
        for (name, labels), value in items:
            tag = ",".join(f'{k}="{v}"' for k, v in labels)
            lines.append(f"decaf_{name}{{{tag}}} {value:g}" if tag else f"decaf_{name} {value:g}")
        lines.extend(f"decaf_{name} {value:g}" for name, value in sorted(gauges.items()))
        return "\n".join(lines) + "\n"
