"""--otlp-traces-endpoint: a real server sends its spans over OTLP/HTTP to a local
receiver; each POST request is a server span continuing the caller's trace, with its
stages as children."""

from __future__ import annotations

import http.server
import threading
import time

import httpx
import pytest

from tests.serving import cenote_serve, free_port

trace_service = pytest.importorskip(
    "opentelemetry.proto.collector.trace.v1.trace_service_pb2",
    reason="opentelemetry-proto decodes what the receiver gets")


class Receiver(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver: keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (the stdlib's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = trace_service.ExportTraceServiceRequest()
                request.ParseFromString(body)
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        receiver.spans.extend(scope.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def test_a_request_is_a_span_with_its_stages_in_the_callers_trace(minilm_path, monkeypatch):
    receiver = Receiver()
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # export within 0.1 s
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    try:
        with cenote_serve([str(minilm_path), "--otlp-traces-endpoint", endpoint]) as server:
            response = httpx.post(f"{server.url}/v1/embeddings", json={"input": "a flood"},
                                  headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
            assert response.status_code == 200
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and len(receiver.spans) < 5:
                time.sleep(0.1)
    finally:
        receiver.shutdown()
    by_name = {span.name: span for span in receiver.spans}
    root = by_name["POST /v1/embeddings"]
    assert root.trace_id.hex() == trace_id and root.parent_span_id.hex() == "00f067aa0ba902b7"
    stages = ["preprocessing", "queue", "engine", "postprocessing"]
    assert set(stages) <= set(by_name)
    for name in stages:
        span = by_name[name]
        assert span.parent_span_id == root.span_id and span.trace_id == root.trace_id
        assert root.start_time_unix_nano <= span.start_time_unix_nano
        assert span.end_time_unix_nano <= root.end_time_unix_nano
    ordered = [by_name[name] for name in stages]
    assert all(a.end_time_unix_nano <= b.start_time_unix_nano + 1
               for a, b in zip(ordered, ordered[1:], strict=False))


def test_an_unknown_otlp_protocol_is_refused_by_name():
    from cenote.server.tracing import Tracing

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "carrier-pigeon")
        with pytest.raises(ValueError, match="carrier-pigeon"):
            Tracing("http://127.0.0.1:1/v1/traces")
