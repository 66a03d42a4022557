"""OpenTelemetry providers, installed once per process at start-up.

With tracing on, FastAPI's native telemetry records a span for every request through the
global tracer provider set here; Berth adds storage-call spans and the
``berth.storage.call.duration`` histogram (storage/traced.py). HTTP request metrics are Berth's
own (requests.py), recorded without the SDK on the request path. Metrics are exposed for Prometheus
at ``/metrics``; spans are exported by OTLP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from ..config import ObservabilitySettings

log = logging.getLogger(__name__)
_INSTALLED: set[str] = set()


@dataclass
class Instruments:
    tracer: trace.Tracer | None
    storage_duration: metrics.Histogram


def setup_telemetry(settings: ObservabilitySettings) -> Instruments:
    """Install the global providers once per process; later calls reuse them."""
    resource = Resource.create({"service.name": "berth"})
    if settings.metrics and "meter" not in _INSTALLED:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        metrics.set_meter_provider(
            MeterProvider(resource=resource, metric_readers=[PrometheusMetricReader()])
        )
        _INSTALLED.add("meter")
    tracer = None
    if settings.tracing:
        if "tracer" not in _INSTALLED:
            provider = TracerProvider(resource=resource)
            _add_exporter(provider)
            trace.set_tracer_provider(provider)
            _INSTALLED.add("tracer")
        tracer = trace.get_tracer("berth")
    return Instruments(
        tracer=tracer,
        storage_duration=metrics.get_meter("berth").create_histogram(
            "berth.storage.call.duration", unit="s", description="Storage driver call duration"
        ),
    )


def _add_exporter(provider: TracerProvider) -> None:
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore
            OTLPSpanExporter,
        )
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but the OTLP exporter is not installed")
        return
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
