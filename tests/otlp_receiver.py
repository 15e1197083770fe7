"""An OTLP/HTTP trace receiver for the end-to-end tests, built on the official OpenTelemetry
protobuf definitions (PyPI opentelemetry-proto), not on taskscope's types.

Usage: otlp_receiver.py PORT OUT_FILE [http|grpc] [CERT_PEM KEY_PEM]
Every span, and every metric data point (with "signal": "metrics"), received is appended to
OUT_FILE as one JSON object per line, with the transport it came by and the request's
`authorization` and `x-tenant` headers (or gRPC metadata). HTTP: POST /v1/traces and
/v1/metrics only (protobuf); anything else is refused. gRPC: the collector's TraceService and
MetricsService Export (PyPI grpcio). With CERT_PEM and KEY_PEM: TLS.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Status


def value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def attributes(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


RECORDED_HEADERS = ("authorization", "x-tenant")


def record(request, transport, headers):
    """Appends the spans of an ExportTraceServiceRequest to OUT."""
    with open(OUT, "a") as out:
        for resource_spans in request.resource_spans:
            resource = attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    out.write(json.dumps({
                            "transport": transport,
                            "headers": headers,
                            "resource": resource,
                            "scope": scope_spans.scope.name,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_span_id": span.parent_span_id.hex(),
                            "name": span.name,
                            "start_unix_nano": span.start_time_unix_nano,
                            "end_unix_nano": span.end_time_unix_nano,
                            "status_code": Status.StatusCode.Name(span.status.code),
                            "status_message": span.status.message,
                            "attributes": attributes(span.attributes),
                            "events": [
                                {"name": e.name, "time_unix_nano": e.time_unix_nano,
                                 "attributes": attributes(e.attributes)}
                                for e in span.events
                            ],
                        }) + "\n")


def record_metrics(request, transport, headers):
    """Appends each data point of an ExportMetricsServiceRequest to OUT (signal "metrics")."""
    with open(OUT, "a") as out:
        for resource_metrics in request.resource_metrics:
            resource = attributes(resource_metrics.resource.attributes)
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    kind = metric.WhichOneof("data")
                    data = getattr(metric, kind)
                    for point in data.data_points:
                        row = {
                            "signal": "metrics", "transport": transport, "headers": headers,
                            "resource": resource,
                            "scope": scope_metrics.scope.name, "name": metric.name, "type": kind,
                            "attributes": attributes(point.attributes),
                        }
                        if kind == "histogram":
                            row.update(count=point.count, sum=point.sum,
                                       bucket_counts=list(point.bucket_counts),
                                       explicit_bounds=list(point.explicit_bounds))
                        else:
                            row["value"] = point.as_double if point.HasField("as_double") else point.as_int
                            if kind == "sum":
                                row["monotonic"] = data.is_monotonic
                        out.write(json.dumps(row) + "\n")


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Type") != "application/x-protobuf" or self.path not in ("/v1/traces", "/v1/metrics"):
            self.send_response(400)
            self.end_headers()
            return
        headers = {k: self.headers[k] for k in RECORDED_HEADERS if self.headers.get(k)}
        if self.path == "/v1/metrics":
            request = ExportMetricsServiceRequest()
            request.ParseFromString(body)
            record_metrics(request, "http", headers)
            reply = ExportMetricsServiceResponse().SerializeToString()
        else:
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            record(request, "http", headers)
            reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def grpc_headers(context):
    return {k: v for k, v in context.invocation_metadata() if k in RECORDED_HEADERS}


def serve_grpc(port, tls):
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            record(request, "grpc", grpc_headers(context))
            return ExportTraceServiceResponse()

    class MetricsService(metrics_service_pb2_grpc.MetricsServiceServicer):
        def Export(self, request, context):
            record_metrics(request, "grpc", grpc_headers(context))
            return ExportMetricsServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(MetricsService(), server)
    if tls:
        cert, key = (open(path, "rb").read() for path in tls)
        server.add_secure_port(f"127.0.0.1:{port}", grpc.ssl_server_credentials([(key, cert)]))
    else:
        server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("listening", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    PORT, OUT = int(sys.argv[1]), sys.argv[2]
    TLS = sys.argv[4:6] if len(sys.argv) > 5 else None
    if len(sys.argv) > 3 and sys.argv[3] == "grpc":
        serve_grpc(PORT, TLS)
    else:
        server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
        if TLS:
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*TLS)
            server.socket = context.wrap_socket(server.socket, server_side=True)
        print("listening", flush=True)
        server.serve_forever()
