//! A real OTLP receiver for the tests, on 127.0.0.1:0: gRPC (tonic's TraceService and
//! MetricsService from opentelemetry-proto) or HTTP/protobuf (`POST /v1/traces` and
//! `/v1/metrics` on a hyper server). Every decoded span, and every metrics export request,
//! goes on a channel the test awaits.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as Number;
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, HistogramDataPoint, Metric, NumberDataPoint,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A span as received, with its resource's `service.name`.
#[derive(Debug, Clone)]
pub struct Received {
    pub service: String,
    pub span: Span,
}

pub struct Collector {
    pub addr: SocketAddr,
    pub endpoint: String,
    /// Where metrics go (`/v1/metrics` over HTTP).
    pub metrics_endpoint: String,
    pub protocol: &'static str,
    rx: mpsc::UnboundedReceiver<Received>,
    metrics_rx: mpsc::UnboundedReceiver<ExportMetricsServiceRequest>,
}

/// The senders the services push on.
#[derive(Clone)]
struct Sinks {
    spans: mpsc::UnboundedSender<Received>,
    metrics: mpsc::UnboundedSender<ExportMetricsServiceRequest>,
}

fn sinks() -> (
    Sinks,
    mpsc::UnboundedReceiver<Received>,
    mpsc::UnboundedReceiver<ExportMetricsServiceRequest>,
) {
    let (spans, rx) = mpsc::unbounded_channel();
    let (metrics, metrics_rx) = mpsc::unbounded_channel();
    (Sinks { spans, metrics }, rx, metrics_rx)
}

fn push(tx: &mpsc::UnboundedSender<Received>, req: ExportTraceServiceRequest) {
    for rs in req.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|kv| kv.key == "service.name")
            .and_then(
                |kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                },
            )
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for span in ss.spans {
                let _ = tx.send(Received {
                    service: service.clone(),
                    span,
                });
            }
        }
    }
}

struct Grpc(mpsc::UnboundedSender<Received>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        push(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

struct GrpcMetrics(mpsc::UnboundedSender<ExportMetricsServiceRequest>);

#[tonic::async_trait]
impl MetricsService for GrpcMetrics {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

async fn http_export(tx: Sinks, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: Vec<u8>| {
        let mut res = Response::new(Full::new(Bytes::from(body)));
        *res.status_mut() = status;
        res.headers_mut()
            .insert("content-type", "application/x-protobuf".parse().unwrap());
        res
    };
    let path = req.uri().path().to_string();
    if req.method() != http::Method::POST {
        return reply(StatusCode::NOT_FOUND, Vec::new());
    }
    let body = req.into_body().collect().await.unwrap().to_bytes();
    match path.as_str() {
        "/v1/traces" => match ExportTraceServiceRequest::decode(body) {
            Ok(r) => {
                push(&tx.spans, r);
                let ok = ExportTraceServiceResponse::default();
                reply(StatusCode::OK, ok.encode_to_vec())
            }
            Err(_) => reply(StatusCode::BAD_REQUEST, Vec::new()),
        },
        "/v1/metrics" => match ExportMetricsServiceRequest::decode(body) {
            Ok(r) => {
                let _ = tx.metrics.send(r);
                let ok = ExportMetricsServiceResponse::default();
                reply(StatusCode::OK, ok.encode_to_vec())
            }
            Err(_) => reply(StatusCode::BAD_REQUEST, Vec::new()),
        },
        _ => reply(StatusCode::NOT_FOUND, Vec::new()),
    }
}

impl Collector {
    /// An OTLP/gRPC receiver.
    pub async fn grpc() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx, metrics_rx) = sinks();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Grpc(tx.spans)))
            .add_service(MetricsServiceServer::new(GrpcMetrics(tx.metrics)))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
        tokio::spawn(server);
        Collector {
            addr,
            endpoint: format!("http://{addr}"),
            metrics_endpoint: format!("http://{addr}"),
            protocol: "grpc",
            rx,
            metrics_rx,
        }
    }

    /// An OTLP/HTTP receiver (binary protobuf).
    pub async fn http() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx, metrics_rx) = sinks();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let tx = tx.clone();
                let svc = hyper::service::service_fn(move |req| {
                    let tx = tx.clone();
                    async move { Ok::<_, Infallible>(http_export(tx, req).await) }
                });
                tokio::spawn(
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .into_owned(),
                );
            }
        });
        Collector {
            addr,
            endpoint: format!("http://{addr}/v1/traces"),
            metrics_endpoint: format!("http://{addr}/v1/metrics"),
            protocol: "http/protobuf",
            rx,
            metrics_rx,
        }
    }

    /// The next metrics export request received, waiting at most 10 s.
    pub async fn next_metrics(&mut self) -> ExportMetricsServiceRequest {
        tokio::time::timeout(Duration::from_secs(10), self.metrics_rx.recv())
            .await
            .expect("a metrics export within 10 s")
            .expect("collector running")
    }

    /// The first metrics export (cumulative: everything so far) for which `cond` holds,
    /// waiting at most 10 s for each.
    pub async fn metrics_until(
        &mut self,
        mut cond: impl FnMut(&ExportMetricsServiceRequest) -> bool,
    ) -> ExportMetricsServiceRequest {
        loop {
            let r = self.next_metrics().await;
            if cond(&r) {
                return r;
            }
        }
    }

    /// The next span received, waiting at most 10 s.
    pub async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(10), self.rx.recv())
            .await
            .expect("a span within 10 s")
            .expect("collector running")
    }

    /// The next `n` spans of trace `trace_id` (spans of other traces are skipped).
    pub async fn trace(&mut self, trace_id: &[u8], n: usize) -> Vec<Received> {
        let mut out = Vec::new();
        while out.len() < n {
            let r = self.next().await;
            if r.span.trace_id == trace_id {
                out.push(r);
            }
        }
        out
    }

    /// Every span received so far, without waiting.
    pub fn drain(&mut self) -> Vec<Received> {
        let mut out = Vec::new();
        while let Ok(r) = self.rx.try_recv() {
            out.push(r);
        }
        out
    }
}

/// The metric `name` of an export.
pub fn metric<'a>(r: &'a ExportMetricsServiceRequest, name: &str) -> &'a Metric {
    let all = || {
        r.resource_metrics
            .iter()
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| &sm.metrics)
    };
    all().find(|m| m.name == name).unwrap_or_else(|| {
        let names: Vec<_> = all().map(|m| &m.name).collect();
        panic!("no {name} among {names:?}")
    })
}

/// Attributes by key, string values as they are and others in debug form.
pub fn attr_map(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

/// The histogram's points, checked cumulative.
pub fn histogram(m: &Metric) -> &[HistogramDataPoint] {
    match &m.data {
        Some(Data::Histogram(h)) => {
            assert_eq!(
                h.aggregation_temporality,
                AggregationTemporality::Cumulative as i32,
                "{}",
                m.name
            );
            &h.data_points
        }
        other => panic!("{} is not a histogram: {other:?}", m.name),
    }
}

/// The monotonic sum's points, checked cumulative.
pub fn counter(m: &Metric) -> &[NumberDataPoint] {
    match &m.data {
        Some(Data::Sum(s)) => {
            assert!(s.is_monotonic, "{}", m.name);
            assert_eq!(
                s.aggregation_temporality,
                AggregationTemporality::Cumulative as i32,
                "{}",
                m.name
            );
            &s.data_points
        }
        other => panic!("{} is not a sum: {other:?}", m.name),
    }
}

/// A counter point's value.
pub fn int_value(p: &NumberDataPoint) -> u64 {
    match p.value {
        Some(Number::AsInt(i)) => u64::try_from(i).unwrap(),
        other => panic!("not an integer: {other:?}"),
    }
}

/// The counter `name`, all points together; 0 before it has any.
pub fn counter_total(r: &ExportMetricsServiceRequest, name: &str) -> u64 {
    r.resource_metrics
        .iter()
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .filter(|m| m.name == name)
        .flat_map(counter)
        .map(int_value)
        .sum()
}

/// Lower-case hex of an id.
pub fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of a hex id.
pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A span's attribute value.
pub fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

pub fn str_attr<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    match attr(span, key) {
        Some(Value::StringValue(s)) => Some(s),
        _ => None,
    }
}

pub fn int_attr(span: &Span, key: &str) -> Option<i64> {
    match attr(span, key) {
        Some(Value::IntValue(i)) => Some(*i),
        _ => None,
    }
}

pub fn f64_attr(span: &Span, key: &str) -> Option<f64> {
    match attr(span, key) {
        Some(Value::DoubleValue(f)) => Some(*f),
        _ => None,
    }
}

pub fn bool_attr(span: &Span, key: &str) -> Option<bool> {
    match attr(span, key) {
        Some(Value::BoolValue(b)) => Some(*b),
        _ => None,
    }
}

pub fn strings_attr(span: &Span, key: &str) -> Option<Vec<String>> {
    match attr(span, key) {
        Some(Value::ArrayValue(a)) => Some(
            a.values
                .iter()
                .filter_map(|v| match &v.value {
                    Some(Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    }
}
