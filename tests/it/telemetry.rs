//! OpenTelemetry: jobd exports metrics and spans over OTLP/gRPC to the endpoint the standard
//! variables name — here a receiver of the test's own — and nothing when none is named.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use jobd::api::proto::{
    self, job_service_client::JobServiceClient, worker_service_client::WorkerServiceClient,
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
    trace::v1::span::SpanKind,
};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

use crate::harness::*;

/// An OTLP collector that keeps everything it is sent.
#[derive(Clone, Default)]
struct Receiver {
    metrics: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
    traces: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.metrics.lock().unwrap().push(request.into_inner());
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.traces.lock().unwrap().push(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    async fn start() -> (Self, String) {
        let receiver = Self::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let server = tonic::transport::Server::builder()
            .add_service(MetricsServiceServer::new(receiver.clone()))
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener));
        tokio::spawn(server);
        (receiver, endpoint)
    }

    /// The latest value of every metric point: name and attributes -> value (sums and
    /// gauges) or count (histograms). Cumulative temporality: the latest export has it all.
    fn points(&self) -> BTreeMap<(String, BTreeMap<String, String>), f64> {
        let mut points = BTreeMap::new();
        for request in self.metrics.lock().unwrap().iter() {
            for resource in &request.resource_metrics {
                for scope in &resource.scope_metrics {
                    for metric in &scope.metrics {
                        let mut put = |attributes: &[KeyValue], value: f64| {
                            points.insert((metric.name.clone(), attrs(attributes)), value);
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

    /// The value of `name` at the point whose attributes include `with`.
    fn value(&self, name: &str, with: &[(&str, &str)]) -> Option<f64> {
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

    fn resource_attributes(&self) -> BTreeMap<String, String> {
        let metrics = self.metrics.lock().unwrap();
        let resource = metrics
            .iter()
            .flat_map(|r| &r.resource_metrics)
            .find_map(|r| r.resource.as_ref());
        resource.map(|r| attrs(&r.attributes)).unwrap_or_default()
    }
}

fn attrs(attributes: &[KeyValue]) -> BTreeMap<String, String> {
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

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

fn traced<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{PARENT_ID}-01").parse().unwrap(),
    );
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_spans_reach_the_otlp_endpoint() {
    let (receiver, endpoint) = Receiver::start().await;
    let redis = RedisServer::start();
    let jobd = Running::start_with_env(
        &redis.url(),
        &["--log-format", "json", "--shutdown-timeout", "5s"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "300"),
            ("OTEL_SERVICE_NAME", "jobd-under-test"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test"),
            ("RUST_LOG", "info,jobd=debug"),
        ],
    );
    jobd.wait_for("jobd started").await;
    let url = format!("http://{}", jobd.address());
    let mut jobs = JobServiceClient::connect(url.clone()).await.unwrap();
    let mut workers = WorkerServiceClient::connect(url).await.unwrap();

    let submitted = jobs
        .submit_job(traced(proto::SubmitJobRequest {
            queue: "otel".into(),
            kind: "k".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let claimed = workers
        .claim_job(claim_request("otel", Duration::from_secs(5)))
        .await
        .unwrap()
        .into_inner();
    let job = claimed.job.clone().unwrap();
    assert_eq!(job.id, submitted.id);
    let traceparent = job
        .trace_context
        .get("traceparent")
        .expect("the claim carries the submitter's trace");
    assert!(
        traceparent.starts_with(&format!("00-{TRACE_ID}-")),
        "{traceparent}"
    );
    assert!(
        !traceparent.contains(PARENT_ID),
        "the parent is jobd's submit span: {traceparent}"
    );
    complete(&mut workers, &claimed, b"done").await.unwrap();
    let (events, end) = watch_to_end(&mut jobs, &job.id, 0).await;
    end.unwrap();
    assert_eq!(events.len(), 3);
    let other = submit(&mut jobs, "otel", b"").await;
    jobs.cancel_job(proto::CancelJobRequest {
        job_id: other.id,
        reason: String::new(),
    })
    .await
    .unwrap();
    // A retried failure, and a lease that runs out while a watcher waits through a subscriber
    // reconnect.
    let retried = submit(&mut jobs, "otel", b"").await;
    let claim = claim(&mut workers, "otel").await;
    assert_eq!(claim.job.as_ref().unwrap().id, retried.id);
    assert_eq!(
        fail(&mut workers, &claim, "flaky", true).await.state(),
        proto::JobState::Scheduled
    );
    let mut silent = proto::SubmitJobRequest {
        queue: "silent".into(),
        kind: "k".into(),
        ..Default::default()
    };
    silent.lease = Some(pb_duration(Duration::from_secs(1)));
    let silent = submit_request(&mut jobs, silent).await.job.unwrap();
    let mut no_lease = claim_request("silent", Duration::from_secs(5));
    no_lease.lease = None;
    let claimed = workers.claim_job(no_lease).await.unwrap().into_inner();
    acknowledge(&mut workers, &silent.id, &claimed.lease_token).await;
    let mut watcher = jobs
        .watch_job(proto::WatchJobRequest {
            job_id: silent.id.clone(),
            after_sequence: 2,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]), "1");
    let retry = tokio::time::timeout(Duration::from_secs(10), watcher.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(retry.r#type(), proto::EventType::RetryScheduled);
    let missing = jobs
        .get_job(proto::GetJobRequest {
            job_id: format!("otel.{}", "0".repeat(26)),
        })
        .await;
    assert_eq!(missing.unwrap_err().code(), tonic::Code::NotFound);

    let submit = [
        ("rpc.method", "jobd.v1.JobService/SubmitJob"),
        ("rpc.response.status_code", "OK"),
        ("rpc.system.name", "grpc"),
    ];
    let not_found = [
        ("rpc.method", "jobd.v1.JobService/GetJob"),
        ("rpc.response.status_code", "NOT_FOUND"),
        ("error.type", "NOT_FOUND"),
    ];
    eventually(Duration::from_secs(20), "the metrics", || async {
        let complete = receiver.value("jobd.jobs.finished", &[("jobd.job.outcome", "completed")])
            == Some(1.0)
            && receiver.value("jobd.jobs.finished", &[("jobd.job.outcome", "cancelled")])
                == Some(1.0)
            && receiver.value("rpc.server.call.duration", &submit) == Some(4.0)
            && receiver.value("rpc.server.call.duration", &not_found) == Some(1.0)
            && receiver.value(
                "jobd.queue.depth",
                &[("jobd.queue", "otel"), ("jobd.job.state", "completed")],
            ) == Some(1.0);
        complete.then_some(())
    })
    .await;
    assert_eq!(
        receiver.value(
            "jobd.jobs.submitted",
            &[("jobd.queue", "otel"), ("jobd.job.kind", "k")]
        ),
        Some(1.0)
    );
    assert_eq!(
        receiver.value(
            "jobd.jobs.submitted",
            &[("jobd.queue", "otel"), ("jobd.job.kind", "test.kind")]
        ),
        Some(2.0)
    );
    assert_eq!(
        receiver.value("jobd.job.queue_wait", &[("jobd.queue", "otel")]),
        Some(2.0)
    );
    assert_eq!(
        receiver.value(
            "jobd.job.run_time",
            &[("jobd.queue", "otel"), ("jobd.job.outcome", "completed")]
        ),
        Some(1.0)
    );
    assert_eq!(
        receiver.value("jobd.redis.connected", &[("jobd.redis.connection", "pool")]),
        Some(1.0)
    );
    assert_eq!(
        receiver.value(
            "jobd.redis.connected",
            &[("jobd.redis.connection", "subscriber")]
        ),
        Some(1.0)
    );
    assert!(
        receiver
            .value(
                "jobd.redis.duration",
                &[("jobd.redis.operation", "submit_many")]
            )
            .is_some_and(|n| n >= 2.0)
    );
    assert_eq!(receiver.value("jobd.claims.waiting", &[]), Some(0.0));
    assert_eq!(
        receiver.value(
            "jobd.jobs.retries",
            &[("jobd.queue", "otel"), ("jobd.reason", "failed")]
        ),
        Some(1.0)
    );
    eventually(
        Duration::from_secs(10),
        "the lease expiry and reconnect metrics",
        || async {
            let seen = receiver.value("jobd.leases.expired", &[("jobd.queue", "silent")])
                == Some(1.0)
                && receiver.value(
                    "jobd.jobs.retries",
                    &[("jobd.queue", "silent"), ("jobd.reason", "lease_expired")],
                ) == Some(1.0)
                && receiver
                    .value(
                        "jobd.redis.reconnects",
                        &[("jobd.redis.connection", "subscriber")],
                    )
                    .is_some_and(|n| n >= 1.0)
                && receiver
                    .value("jobd.watch.resyncs", &[])
                    .is_some_and(|n| n >= 1.0);
            seen.then_some(())
        },
    )
    .await;
    assert_eq!(
        receiver.value(
            "rpc.server.call.duration",
            &[
                ("rpc.method", "jobd.v1.JobService/WatchJob"),
                ("rpc.response.status_code", "OK")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        receiver.value("jobd.watch.streams", &[]),
        Some(1.0),
        "the silent job's stream is open"
    );
    let resource = receiver.resource_attributes();
    assert_eq!(
        resource.get("service.name").map(String::as_str),
        Some("jobd-under-test")
    );
    assert_eq!(
        resource.get("deployment.environment").map(String::as_str),
        Some("test")
    );

    // Spans are flushed at shutdown at the latest.
    let (code, log) = jobd.terminate();
    assert_eq!(code, Some(0), "{log}");
    let spans: Vec<_> = receiver
        .traces
        .lock()
        .unwrap()
        .iter()
        .flat_map(|r| r.resource_spans.clone())
        .flat_map(|r| r.scope_spans)
        .flat_map(|s| s.spans)
        .collect();
    let span = spans
        .iter()
        .find(|span| span.name == "jobd.v1.JobService/SubmitJob" && hex(&span.trace_id) == TRACE_ID)
        .unwrap_or_else(|| {
            panic!(
                "the submit's span, in {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        });
    assert_eq!(
        hex(&span.parent_span_id),
        PARENT_ID,
        "its parent is the caller's span"
    );
    assert_eq!(span.kind(), SpanKind::Server);
    let attributes = attrs(&span.attributes);
    assert_eq!(
        attributes.get("rpc.method").map(String::as_str),
        Some("jobd.v1.JobService/SubmitJob")
    );
    assert_eq!(
        attributes
            .get("rpc.response.status_code")
            .map(String::as_str),
        Some("OK")
    );
    assert!(
        traceparent.contains(&hex(&span.span_id)),
        "the worker gets the submit span as parent"
    );

    // The log line written inside the submit carries its trace id.
    let line = log
        .lines()
        .find(|l| l.contains("job submitted"))
        .expect("a debug line in the submit");
    assert!(line.contains(TRACE_ID), "{line}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_nothing_is_exported_and_nothing_complains() {
    let redis = RedisServer::start();
    let jobd = Running::start_with_env(&redis.url(), &[], &[("RUST_LOG", "info")]);
    jobd.wait_for("jobd started").await;
    let mut jobs = JobServiceClient::connect(format!("http://{}", jobd.address()))
        .await
        .unwrap();
    submit(&mut jobs, "q", b"").await;
    let (code, log) = jobd.terminate();
    assert_eq!(code, Some(0), "{log}");
    for line in log.lines() {
        assert!(
            !line.contains("WARN") && !line.contains("ERROR"),
            "a complaint: {line}"
        );
        assert!(
            !line.to_lowercase().contains("export"),
            "exporter chatter: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_sdk_disabled_turns_export_off_even_with_an_endpoint() {
    let (receiver, endpoint) = Receiver::start().await;
    let redis = RedisServer::start();
    let jobd = Running::start_with_env(
        &redis.url(),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "100"),
            ("OTEL_SDK_DISABLED", "true"),
        ],
    );
    jobd.wait_for("jobd started").await;
    let mut jobs = JobServiceClient::connect(format!("http://{}", jobd.address()))
        .await
        .unwrap();
    submit(&mut jobs, "q", b"").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, log) = jobd.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        receiver.metrics.lock().unwrap().is_empty(),
        "no metrics exported"
    );
    assert!(
        receiver.traces.lock().unwrap().is_empty(),
        "no spans exported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_claim_counts_as_waiting_only_once_its_completion_is_done() {
    let (receiver, endpoint) = Receiver::start().await;
    let redis = RedisServer::start_with(&["--enable-debug-command", "local"]);
    let jobd = Running::start_with_env(
        &redis.url(),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "100"),
        ],
    );
    jobd.wait_for("jobd started").await;
    let url = format!("http://{}", jobd.address());
    let mut jobs = JobServiceClient::connect(url.clone()).await.unwrap();
    let mut workers = WorkerServiceClient::connect(url).await.unwrap();
    submit(&mut jobs, "gauge", b"").await;
    let claimed = claim(&mut workers, "gauge").await;

    // Redis stalls (within the test server's 500 ms command timeout), so the completion is in
    // flight; its next claim is registered but not waiting for jobs yet.
    let stall = redis.stall("0.45").await;
    let completing = tokio::spawn(async move {
        workers
            .complete_job(proto::CompleteJobRequest {
                job_id: claimed.job.unwrap().id,
                lease_token: claimed.lease_token,
                result: Default::default(),
                next: Some(proto::ClaimJobsRequest {
                    claim: Some(claim_request("gauge", Duration::from_secs(10))),
                    max_jobs: 1,
                }),
            })
            .await
    });
    // Exports (every 100 ms) while the completion waits on Redis.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = receiver.value("jobd.claims.waiting", &[]);
    stall.join().unwrap();
    assert_eq!(
        during,
        Some(0.0),
        "no claim waits while the completion runs"
    );
    // Completed, the next claim waits for a job: now it counts.
    eventually(
        Duration::from_secs(5),
        "the next claim to count",
        || async { (receiver.value("jobd.claims.waiting", &[]) == Some(1.0)).then_some(()) },
    )
    .await;
    completing.abort();
    let (code, log) = jobd.terminate();
    assert_eq!(code, Some(0), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_its_deadline_is_recorded_as_deadline_exceeded() {
    use crate::deadline::{bare_clients, with_deadline};

    let (receiver, endpoint) = Receiver::start().await;
    let redis = RedisServer::start();
    let jobd = Running::start_with_env(
        &redis.url(),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "100"),
        ],
    );
    jobd.wait_for("jobd started").await;
    let (mut jobs, mut workers) = bare_clients(&jobd.address()).await;
    let claim = workers
        .claim_job(with_deadline(
            claim_request("nothing", Duration::from_secs(10)),
            "300m",
        ))
        .await;
    assert_eq!(claim.unwrap_err().code(), tonic::Code::DeadlineExceeded);
    let mut plain = JobServiceClient::connect(format!("http://{}", jobd.address()))
        .await
        .unwrap();
    let job = submit(&mut plain, "q", b"").await;
    let mut stream = jobs
        .watch_job(with_deadline(
            proto::WatchJobRequest {
                job_id: job.id,
                after_sequence: 0,
            },
            "300m",
        ))
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().expect("the first event");
    let end = tokio::time::timeout(Duration::from_secs(5), stream.message()).await;
    drop(stream);
    assert!(
        matches!(&end, Ok(Err(status)) if status.code() == tonic::Code::DeadlineExceeded),
        "{end:?}"
    );

    let recorded = |method: &'static str, code: &'static str| {
        receiver.value(
            "rpc.server.call.duration",
            &[("rpc.method", method), ("rpc.response.status_code", code)],
        )
    };
    for method in [
        "jobd.v1.WorkerService/ClaimJob",
        "jobd.v1.JobService/WatchJob",
    ] {
        eventually(Duration::from_secs(10), method, || async {
            (recorded(method, "DEADLINE_EXCEEDED") == Some(1.0)).then_some(())
        })
        .await;
        assert_eq!(recorded(method, "CANCELLED"), None, "{method}");
    }
    let (code, log) = jobd.terminate();
    assert_eq!(code, Some(0), "{log}");
}
