"""Prometheus metrics: a small thread-safe registry and text exposition (format 0.0.4).

Kept in-house instead of prometheus-client so each app instance owns its registry
(no process-global state to reset between tests) and the service needs no extra package.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

LabelValues = tuple[str, ...]


class _Metric:
    kind = ""

    def __init__(self, name: str, doc: str, labels: Sequence[str]) -> None:
        self.name = name
        self.doc = doc
        self.labels = tuple(labels)
        self._lock = threading.Lock()

    def _key(self, values: dict[str, str]) -> LabelValues:
        if set(values) != set(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {sorted(values)}")
        return tuple(str(values[k]) for k in self.labels)

    def _fmt(self, key: LabelValues, extra: dict[str, str] | None = None) -> str:
        pairs = list(zip(self.labels, key, strict=True)) + list((extra or {}).items())
        if not pairs:
            return ""
        return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"

    def render(self) -> list[str]:
        """Exposition lines for this metric, HELP and TYPE first."""
        return [f"# HELP {self.name} {self.doc}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    """A monotonically increasing count per label set."""

    kind = "counter"

    def __init__(self, name: str, doc: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, doc, labels)
        # Unlabelled, it starts at 0 (as prometheus-client's do): a series that appears only at
        # its first increment hides that increment from increase() and rate().
        self._values: dict[LabelValues, float] = {} if self.labels else {(): 0.0}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount``."""
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def render(self) -> list[str]:
        lines = super().render()
        with self._lock:
            for key, value in sorted(self._values.items()):
                lines.append(f"{self.name}{self._fmt(key)} {_num(value)}")
        return lines


class Histogram(_Metric):
    """Cumulative-bucket histogram per label set."""

    kind = "histogram"

    def __init__(
        self, name: str, doc: str, labels: Sequence[str] = (), buckets: Sequence[float] = ()
    ) -> None:
        super().__init__(name, doc, labels)
        self.buckets = tuple(sorted(buckets or LATENCY_BUCKETS))
        self._series: dict[LabelValues, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, **labels: str) -> None:
        """Record one observation."""
        key = self._key(labels)
        with self._lock:
            counts, sums = self._series.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0]))
            counts[bisect.bisect_left(self.buckets, value)] += 1
            sums[0] += value

    def count(self, **labels: str) -> int:
        """Number of observations for one label set."""
        with self._lock:
            series = self._series.get(self._key(labels))
            return sum(series[0]) if series else 0

    def render(self) -> list[str]:
        lines = super().render()
        with self._lock:
            for key, (counts, sums) in sorted(self._series.items()):
                running = 0
                for bound, c in zip((*self.buckets, math.inf), counts, strict=True):
                    running += c
                    le = {"le": "+Inf" if math.isinf(bound) else _num(bound)}
                    lines.append(f"{self.name}_bucket{self._fmt(key, le)} {running}")
                lines.append(f"{self.name}_sum{self._fmt(key)} {_num(sums[0])}")
                lines.append(f"{self.name}_count{self._fmt(key)} {running}")
        return lines


class Metrics:
    """The service's metrics; one instance per app."""

    def __init__(self) -> None:
        self.requests = Histogram(
            "hashbridge_request_duration_seconds",
            "HTTP request latency by method, route template and status.",
            ("method", "route", "status"),
        )
        self.encode = Histogram(
            "hashbridge_encode_duration_seconds",
            "Encoder call latency per micro-batch.",
            ("modality",),
        )
        self.encode_batch = Histogram(
            "hashbridge_encode_batch_items",
            "Items per encoder call (micro-batch size).",
            ("modality",),
            SIZE_BUCKETS,
        )
        self.search = Histogram(
            "hashbridge_search_duration_seconds", "Index search latency.", ("query",)
        )
        self.items_written = Counter(
            "hashbridge_items_written_total", "Items upserted, by modality.", ("modality",)
        )
        self.items_deleted = Counter(
            "hashbridge_items_deleted_total", "Items deleted, by modality.", ("modality",)
        )

    def observe_encode(self, modality: str, seconds: float, items: int) -> None:
        """Record one encoder call."""
        self.encode.observe(seconds, modality=modality)
        self.encode_batch.observe(items, modality=modality)

    def render(self) -> str:
        """The whole registry in Prometheus text format."""
        metrics: list[_Metric] = [
            self.requests,
            self.encode,
            self.encode_batch,
            self.search,
            self.items_written,
            self.items_deleted,
        ]
        return "\n".join(line for m in metrics for line in m.render()) + "\n"


def _num(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
