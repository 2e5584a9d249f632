"""OpenTelemetry traces of the requests a server answers (``--otlp-traces-endpoint``),
as vLLM's: one server span per POST request, continuing the caller's trace
(``traceparent``), with a child span per stage the engine reports — preprocessing
(tokenising, validating), queue (waiting for a batch), engine (the batches that ran
it) and postprocessing (building the answer). The exporter speaks OTLP over gRPC or,
with ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf``, over HTTP. Nothing of this
runs, or is imported, without the flag; with it, the optional packages must be there
(``pip install 'cenote[tracing]'``)."""

from __future__ import annotations

import os
import time
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from cenote.engine.timings import RequestTimings, request_timings
from cenote.server.metrics import StatusWatch
from cenote.version import __version__


class Tracing:
    """An OTLP exporter and the tracer that feeds it."""

    def __init__(self, endpoint: str, service_name: str = "cenote") -> None:
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            raise ValueError("--otlp-traces-endpoint needs OpenTelemetry: pip install "
                             "'cenote[tracing]' (opentelemetry-sdk and an OTLP exporter)."
                             ) from None
        self.provider = TracerProvider(resource=Resource.create(
            {"service.name": service_name, "service.version": __version__}))
        self.provider.add_span_processor(BatchSpanProcessor(_exporter(endpoint)))
        self.tracer = self.provider.get_tracer("cenote", __version__)

    def shutdown(self) -> None:
        """Send what is still buffered and stop the exporter."""
        self.provider.shutdown()


def _exporter(endpoint: str) -> Any:
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        elif protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        else:
            raise ValueError(f"Unsupported OTEL_EXPORTER_OTLP_TRACES_PROTOCOL {protocol!r}; "
                             "use grpc or http/protobuf.")
    except ImportError:
        raise ValueError(f"The OTLP {protocol} exporter is not installed: pip install "
                         "opentelemetry-exporter-otlp.") from None
    return OTLPSpanExporter(endpoint=endpoint)


class TracingMiddleware:
    """A span per POST request, its stages as child spans (from :class:`RequestTimings`
    the engine fills in)."""

    def __init__(self, app: ASGIApp, tracing: Tracing) -> None:
        self.app = app
        self.tracer = tracing.tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        timings = RequestTimings(received=time.time_ns())
        request_timings.set(timings)  # the route's task, made later, inherits it
        watched = StatusWatch(send)
        try:
            await watched.run(self.app, scope, receive)
        finally:
            self._record(scope, timings, watched.status, time.time_ns())

    def _record(self, scope: Scope, t: RequestTimings, status: int, end: int) -> None:
        from opentelemetry import propagate, trace

        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        span = self.tracer.start_span(
            f"POST {scope['path']}", context=propagate.extract(headers),
            kind=trace.SpanKind.SERVER, start_time=t.received,
            attributes={"http.request.method": "POST", "url.path": scope["path"],
                        "http.response.status_code": status})
        if status >= 500:
            span.set_status(trace.Status(trace.StatusCode.ERROR))
        parent = trace.set_span_in_context(span)
        stages = [("preprocessing", t.received, t.prepared)]
        if t.prepared is not None and t.finished is not None:
            if t.scheduled is not None:
                stages += [("queue", t.prepared, t.scheduled), ("engine", t.scheduled, t.finished)]
            else:  # engines in other processes: one span for both
                stages.append(("queue and engine", t.prepared, t.finished))
            stages.append(("postprocessing", t.finished, end))
        for name, start, stop in stages:
            if stop is not None:
                self.tracer.start_span(name, context=parent, start_time=start).end(stop)
        span.end(end)
