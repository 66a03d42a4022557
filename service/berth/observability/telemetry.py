"""OpenTelemetry set up once at start-up: request metrics for Prometheus, optional tracing."""

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
_PROVIDERS: dict[str, object] = {}


@dataclass
class Instruments:
    tracer: trace.Tracer | None
    request_duration: metrics.Histogram
    request_bytes: metrics.Counter
    storage_duration: metrics.Histogram


def setup_telemetry(settings: ObservabilitySettings) -> Instruments:
    """Install the global providers once per process; later calls reuse them."""
    resource = Resource.create({"service.name": "berth"})
    if "meter" not in _PROVIDERS:
        readers = []
        if settings.metrics:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader

            readers.append(PrometheusMetricReader())
        provider = MeterProvider(resource=resource, metric_readers=readers)
        metrics.set_meter_provider(provider)
        _PROVIDERS["meter"] = provider
    tracer = None
    if settings.tracing:
        if "tracer" not in _PROVIDERS:
            tracer_provider = TracerProvider(resource=resource)
            _add_exporter(tracer_provider)
            trace.set_tracer_provider(tracer_provider)
            _PROVIDERS["tracer"] = tracer_provider
        tracer = trace.get_tracer("berth")
    meter = metrics.get_meter("berth")
    return Instruments(
        tracer=tracer,
        request_duration=meter.create_histogram(
            "berth_http_request_duration", unit="s", description="HTTP request duration"
        ),
        request_bytes=meter.create_counter(
            "berth_http_response_bytes", unit="By", description="Response bytes sent"
        ),
        storage_duration=meter.create_histogram(
            "berth_storage_call_duration", unit="s", description="Storage driver call duration"
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
