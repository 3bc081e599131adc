"""Prometheus metrics of the answer engine, on the same ``/metrics`` as the serving layer.

Why per-stage histograms: "the answer is slow" is only actionable once it is known which
stage is slow (a provider, page reads, ranking on a busy CPU, or the model's first
token). The pipeline reports each finished answer's timings and each outcome here.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from search_app.events import AnswerEvent, DoneEvent, ErrorEvent, SupportEvent, TimingsEvent
from serving.metrics import PREFIX

__all__ = ["AnswerMetrics"]

_STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0,
                  15.0, 20.0, 30.0, 60.0, 90.0)


class AnswerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.stage_seconds = Histogram(
            f"{PREFIX}:answer_stage_seconds",
            "Duration of one stage of an answer (search, read, rank, ttft, total).",
            ["stage"], buckets=_STAGE_BUCKETS, registry=registry)
        self.answers = Counter(
            f"{PREFIX}:answers", "Finished answers by outcome (a finish reason or an error "
                                 "code).", ["outcome"], registry=registry)
        self.withheld = Counter(
            f"{PREFIX}:withheld_sentences", "Answer sentences withheld by the strict "
                                            "grounding policy (support check failed).",
            registry=registry)
        self.rate_limited = Counter(
            f"{PREFIX}:rate_limited_requests", "Requests refused by the per-client rate "
                                               "limit.", registry=registry)

    def record(self, event: AnswerEvent) -> None:
        """Count what an answer event says (called for every event of every answer)."""
        if isinstance(event, TimingsEvent):
            self.observe(event)
        elif isinstance(event, SupportEvent):
            self.withheld.inc(event.withheld)
        elif isinstance(event, DoneEvent):
            self.outcome(event.finish_reason)
        elif isinstance(event, ErrorEvent):
            self.outcome(event.code)

    def observe(self, timings: TimingsEvent) -> None:
        stages = {"search": timings.search_ms, "read": timings.read_ms,
                  "rank": timings.rank_ms, "ttft": timings.ttft_ms,
                  "total": timings.total_ms}
        for stage, ms in stages.items():
            if ms is not None:
                self.stage_seconds.labels(stage).observe(ms / 1000)

    def outcome(self, outcome: str) -> None:
        self.answers.labels(outcome).inc()
