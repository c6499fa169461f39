//! An OTLP/gRPC receiver of the test's own, which keeps every metric and span jobd exports to
//! it.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
            metrics_service_server::{MetricsService, MetricsServiceServer},
        },
        trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
            trace_service_server::{TraceService, TraceServiceServer},
        },
    },
    common::v1::{KeyValue, any_value},
    metrics::v1::{metric::Data, number_data_point},
    trace::v1::Span,
};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// The receiver; it serves for as long as the test's runtime runs.
#[derive(Clone)]
pub struct OtlpReceiver {
    endpoint: String,
    metrics: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
    traces: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

/// A metric point's name and attributes.
type Point = (String, BTreeMap<String, String>);

impl OtlpReceiver {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = Self {
            endpoint: format!("http://{}", listener.local_addr().unwrap()),
            metrics: Arc::default(),
            traces: Arc::default(),
        };
        let server = tonic::transport::Server::builder()
            .add_service(MetricsServiceServer::new(receiver.clone()))
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener));
        tokio::spawn(server);
        receiver
    }

    /// The environment that makes jobd export here, metrics every `interval_ms`.
    pub fn exporter_env<'a>(&'a self, interval_ms: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", self.endpoint.as_str()),
            ("OTEL_METRIC_EXPORT_INTERVAL", interval_ms),
        ]
    }

    /// How many metric exports arrived.
    pub fn metric_exports(&self) -> usize {
        self.metrics.lock().unwrap().len()
    }

    /// The value of `name` at the point whose attributes include `with`: its latest value (sums
    /// and gauges) or count (histograms). Cumulative temporality: the latest export has it all.
    pub fn value(&self, name: &str, with: &[(&str, &str)]) -> Option<f64> {
        self.points()
            .into_iter()
            .find_map(|((metric, attributes), value)| {
                let matches = metric == name
                    && with
                        .iter()
                        .all(|(k, v)| attributes.get(*k).map(String::as_str) == Some(*v));
                matches.then_some(value)
            })
    }

    /// The attributes of every series (point) of the metric `name` exported so far.
    pub fn series(&self, name: &str) -> Vec<BTreeMap<String, String>> {
        self.points()
            .into_keys()
            .filter(|(metric, _)| metric == name)
            .map(|(_, attributes)| attributes)
            .collect()
    }

    pub fn resource_attributes(&self) -> BTreeMap<String, String> {
        let metrics = self.metrics.lock().unwrap();
        let resource = metrics
            .iter()
            .flat_map(|r| &r.resource_metrics)
            .find_map(|r| r.resource.as_ref());
        resource
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default()
    }

    /// Every span exported so far.
    pub fn spans(&self) -> Vec<Span> {
        self.traces
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| r.resource_spans.clone())
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans)
            .collect()
    }

    /// Everything exported so far, metrics and spans, as text: to search for what must not
    /// be there.
    pub fn dump(&self) -> String {
        let metrics = self.metrics.lock().unwrap();
        let traces = self.traces.lock().unwrap();
        format!("{:?}\n{:?}", *metrics, *traces)
    }

    /// The latest value of every metric point, by name and attributes.
    fn points(&self) -> BTreeMap<Point, f64> {
        let mut points = BTreeMap::new();
        for request in self.metrics.lock().unwrap().iter() {
            for resource in &request.resource_metrics {
                for scope in &resource.scope_metrics {
                    for metric in &scope.metrics {
                        let mut put = |point_attributes: &[KeyValue], value: f64| {
                            points
                                .insert((metric.name.clone(), attributes(point_attributes)), value);
                        };
                        match &metric.data {
                            Some(Data::Sum(sum)) => sum
                                .data_points
                                .iter()
                                .for_each(|p| put(&p.attributes, number(&p.value))),
                            Some(Data::Gauge(gauge)) => gauge
                                .data_points
                                .iter()
                                .for_each(|p| put(&p.attributes, number(&p.value))),
                            Some(Data::Histogram(h)) => h
                                .data_points
                                .iter()
                                .for_each(|p| put(&p.attributes, p.count as f64)),
                            _ => {}
                        }
                    }
                }
            }
        }
        points
    }
}

#[tonic::async_trait]
impl MetricsService for OtlpReceiver {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.metrics.lock().unwrap().push(request.into_inner());
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl TraceService for OtlpReceiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.traces.lock().unwrap().push(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

/// OTLP attributes as text, by key.
pub fn attributes(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

fn number(value: &Option<number_data_point::Value>) -> f64 {
    match value {
        Some(number_data_point::Value::AsInt(i)) => *i as f64,
        Some(number_data_point::Value::AsDouble(d)) => *d,
        None => f64::NAN,
    }
}
