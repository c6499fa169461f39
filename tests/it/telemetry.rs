//! OpenTelemetry: jobd exports metrics and spans over OTLP/gRPC to the endpoint the standard
//! variables name — here a receiver of the test's own — and nothing when none is named.

use std::time::Duration;

use jobd_client::proto;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tonic::Request;

use crate::harness::*;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

/// `message` sent within the caller's trace: TRACE_ID, from its span PARENT_ID.
fn traced<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{PARENT_ID}-01").parse().unwrap(),
    );
    request
}

/// A metric point jobd must have exported: its name, some of its attributes, its value.
type Exported = (&'static str, &'static [(&'static str, &'static str)], f64);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The jobd binary against `redis`, exporting its metrics (every 300 ms) and spans to a
/// receiver of the test's own as the service "jobd-under-test", and logging JSON.
async fn exporting_jobd(redis: &RedisServer) -> (OtlpReceiver, Running) {
    let receiver = OtlpReceiver::start().await;
    let mut env = receiver.exporter_env("300");
    env.extend([
        ("OTEL_SERVICE_NAME", "jobd-under-test"),
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test"),
        ("RUST_LOG", "info,jobd=debug"),
    ]);
    let args = ["--log-format", "json", "--shutdown-timeout", "5s"];
    let jobd = Running::start_with_env(&redis.url(), &args, &env).await;
    (receiver, jobd)
}

/// Submits a job of queue "otel" within the caller's trace, and claims it: the claim carries
/// the trace, from jobd's submit span. Returns the claim and the traceparent it carries.
async fn submit_traced_and_claim(
    jobs: &mut Jobs,
    workers: &mut Workers,
) -> (proto::ClaimJobResponse, String) {
    let submitted = jobs
        .submit_job(traced(proto::SubmitJobRequest {
            kind: "k".into(),
            ..submit_request("otel")
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
        .expect("the claim carries the submitter's trace")
        .clone();
    assert!(
        traceparent.starts_with(&format!("00-{TRACE_ID}-")),
        "{traceparent}"
    );
    assert!(
        !traceparent.contains(PARENT_ID),
        "the parent is jobd's submit span: {traceparent}"
    );
    (claimed, traceparent)
}

/// A job of queue "silent" whose 1 s lease runs out, watched from its STARTED event through a
/// reconnect of jobd's subscriber: returns the watch, still open, once it got RETRY_SCHEDULED.
async fn lease_running_out_under_a_watcher(
    redis: &RedisServer,
    jobs: &mut Jobs,
    workers: &mut Workers,
) -> tonic::Streaming<proto::JobEvent> {
    let silent = proto::SubmitJobRequest {
        kind: "k".into(),
        lease: Some(pb_duration(Duration::from_secs(1))),
        ..submit_request("silent")
    };
    let silent = submit_with(jobs, silent).await.job.unwrap();
    let mut no_lease = claim_request("silent", Duration::from_secs(5));
    no_lease.lease = None;
    let claimed = workers.claim_job(no_lease).await.unwrap().into_inner();
    acknowledge(workers, &silent.id, &claimed.lease_token).await;
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
    watcher
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_reach_the_otlp_endpoint() {
    let redis = RedisServer::start().await;
    let (receiver, jobd) = exporting_jobd(&redis).await;
    let (mut jobs, mut workers) = jobd.clients().await;
    let _open = make_every_kind_of_call(&redis, &mut jobs, &mut workers).await;
    job_and_call_metrics_are_exported(&receiver).await;
    lease_and_reconnect_metrics_are_exported(&receiver).await;
    let resource = receiver.resource_attributes();
    assert_eq!(
        resource.get("service.name").map(String::as_str),
        Some("jobd-under-test")
    );
    assert_eq!(
        resource.get("deployment.environment").map(String::as_str),
        Some("test")
    );
    let (code, log) = jobd.terminate();
    assert_eq!(code, Some(0), "{log}");
}

/// A job completed and watched, one cancelled, a retried failure, a lease that runs out while a
/// watcher waits through a subscriber reconnect, and a call refused; returns that watcher's
/// stream, still open.
async fn make_every_kind_of_call(
    redis: &RedisServer,
    jobs: &mut Jobs,
    workers: &mut Workers,
) -> tonic::Streaming<proto::JobEvent> {
    let (claimed, _) = submit_traced_and_claim(jobs, workers).await;
    complete(workers, &claimed, b"done").await.unwrap();
    let id = &claimed.job.as_ref().unwrap().id;
    let (events, end) = watch_to_end(jobs, id, 0).await;
    end.unwrap();
    assert_eq!(events.len(), 3);
    let other = submit(jobs, "otel", b"").await;
    cancel(jobs, &other.id, "").await;
    let retried = submit(jobs, "otel", b"").await;
    let failing = claim(workers, "otel").await;
    assert_eq!(failing.job.as_ref().unwrap().id, retried.id);
    assert_eq!(
        fail(workers, &failing, "flaky", true).await.state(),
        proto::JobState::Scheduled
    );
    let open = lease_running_out_under_a_watcher(redis, jobs, workers).await;
    let missing = jobs
        .get_job(proto::GetJobRequest {
            job_id: format!("otel.{}", "0".repeat(26)),
        })
        .await;
    assert_eq!(missing.unwrap_err().code(), tonic::Code::NotFound);
    open
}

/// Waits until `receiver` has the metrics of `make_every_kind_of_call`'s jobs and calls, and
/// asserts their values.
async fn job_and_call_metrics_are_exported(receiver: &OtlpReceiver) {
    let submit_ok = [
        ("rpc.method", "jobd.v1.JobService/SubmitJob"),
        ("rpc.response.status_code", "OK"),
        ("rpc.system.name", "grpc"),
    ];
    let not_found = [
        ("rpc.method", "jobd.v1.JobService/GetJob"),
        ("rpc.response.status_code", "NOT_FOUND"),
        ("error.type", "NOT_FOUND"),
    ];
    until(Duration::from_secs(20), "the metrics", || {
        receiver.value("jobd.jobs.finished", &[("jobd.job.outcome", "completed")]) == Some(1.0)
            && receiver.value("jobd.jobs.finished", &[("jobd.job.outcome", "cancelled")])
                == Some(1.0)
            && receiver.value("rpc.server.call.duration", &submit_ok) == Some(4.0)
            && receiver.value("rpc.server.call.duration", &not_found) == Some(1.0)
            && receiver.value(
                "jobd.queue.depth",
                &[("jobd.queue", "otel"), ("jobd.job.state", "completed")],
            ) == Some(1.0)
    })
    .await;
    let exported: [Exported; 8] = [
        (
            "jobd.jobs.submitted",
            &[("jobd.queue", "otel"), ("jobd.job.kind", "k")],
            1.0,
        ),
        (
            "jobd.jobs.submitted",
            &[("jobd.queue", "otel"), ("jobd.job.kind", "test.kind")],
            2.0,
        ),
        ("jobd.job.queue_wait", &[("jobd.queue", "otel")], 2.0),
        (
            "jobd.job.run_time",
            &[("jobd.queue", "otel"), ("jobd.job.outcome", "completed")],
            1.0,
        ),
        (
            "jobd.redis.connected",
            &[("jobd.redis.connection", "pool")],
            1.0,
        ),
        (
            "jobd.redis.connected",
            &[("jobd.redis.connection", "subscriber")],
            1.0,
        ),
        ("jobd.claims.waiting", &[], 0.0),
        (
            "jobd.jobs.retries",
            &[("jobd.queue", "otel"), ("jobd.reason", "failed")],
            1.0,
        ),
    ];
    for (name, attributes, value) in exported {
        assert_eq!(
            receiver.value(name, attributes),
            Some(value),
            "{name} {attributes:?}"
        );
    }
    assert!(
        receiver
            .value(
                "jobd.redis.duration",
                &[("jobd.redis.operation", "submit_many")]
            )
            .is_some_and(|n| n >= 2.0)
    );
}

/// Waits until `receiver` has the metrics of `make_every_kind_of_call`'s lease that ran out
/// and of the reconnect its watcher waited through, and asserts what the watch streams show.
async fn lease_and_reconnect_metrics_are_exported(receiver: &OtlpReceiver) {
    until(
        Duration::from_secs(10),
        "the lease expiry and reconnect metrics",
        || {
            let at_least_one = |name: &str, attributes: &[(&str, &str)]| {
                receiver.value(name, attributes).is_some_and(|n| n >= 1.0)
            };
            receiver.value("jobd.leases.expired", &[("jobd.queue", "silent")]) == Some(1.0)
                && receiver.value(
                    "jobd.jobs.retries",
                    &[("jobd.queue", "silent"), ("jobd.reason", "lease_expired")],
                ) == Some(1.0)
                && at_least_one(
                    "jobd.redis.reconnects",
                    &[("jobd.redis.connection", "subscriber")],
                )
                && at_least_one("jobd.watch.resyncs", &[])
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_otlp_endpoint_within_the_callers_trace() {
    let redis = RedisServer::start().await;
    let (receiver, jobd) = exporting_jobd(&redis).await;
    let (mut jobs, mut workers) = jobd.clients().await;
    let (claimed, traceparent) = submit_traced_and_claim(&mut jobs, &mut workers).await;
    complete(&mut workers, &claimed, b"done").await.unwrap();

    // Spans are flushed at shutdown at the latest.
    let (code, log) = jobd.terminate();
    assert_eq!(code, Some(0), "{log}");
    let spans = receiver.spans();
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
    let span_attributes = attributes(&span.attributes);
    assert_eq!(
        span_attributes.get("rpc.method").map(String::as_str),
        Some("jobd.v1.JobService/SubmitJob")
    );
    assert_eq!(
        span_attributes
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_nothing_is_exported_and_nothing_complains() {
    let redis = RedisServer::start().await;
    let jobd = Running::start_with_env(&redis.url(), &[], &[("RUST_LOG", "info")]).await;
    submit(&mut jobd.jobs().await, "q", b"").await;
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
    let receiver = OtlpReceiver::start().await;
    let redis = RedisServer::start().await;
    let mut env = receiver.exporter_env("100");
    env.push(("OTEL_SDK_DISABLED", "true"));
    let jobd = Running::start_with_env(&redis.url(), &[], &env).await;
    submit(&mut jobd.jobs().await, "q", b"").await;
    // Five export intervals: that nothing is exported, only time passing can show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, log) = jobd.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(receiver.metric_exports(), 0, "no metrics exported");
    assert!(receiver.spans().is_empty(), "no spans exported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_claim_counts_as_waiting_only_once_its_completion_is_done() {
    let redis = RedisServer::start().await;
    let proxy = FaultyProxy::start(redis.port()).await;
    let receiver = OtlpReceiver::start().await;
    let mut env = receiver.exporter_env("100");
    // The completion below is held back for a second on its way to Redis: it must not time
    // out meanwhile.
    env.push(("JOBD_REDIS_COMMAND_TIMEOUT", "2s"));
    let jobd = Running::start_with_env(&proxy.url(), &[], &env).await;
    let (mut jobs, mut workers) = jobd.clients().await;
    submit(&mut jobs, "gauge", b"").await;
    let claimed = claim(&mut workers, "gauge").await;

    // The completion's call is held back, so that it is in flight; its next claim is
    // registered but not waiting for jobs yet.
    const HELD: &[u8] = b"held-back-result";
    proxy.delay(HELD, Duration::from_secs(1));
    let completing = tokio::spawn(async move {
        workers
            .complete_job(proto::CompleteJobRequest {
                job_id: claimed.job.unwrap().id,
                lease_token: claimed.lease_token,
                result: HELD.to_vec().into(),
                next: Some(proto::ClaimJobsRequest {
                    claim: Some(claim_request("gauge", Duration::from_secs(10))),
                    max_jobs: 1,
                }),
            })
            .await
    });
    proxy.struck().await;
    // The second export from now was taken while the completion waited on Redis.
    let exports = receiver.metric_exports();
    until(Duration::from_secs(5), "two exports more", || {
        receiver.metric_exports() >= exports + 2
    })
    .await;
    let during = receiver.value("jobd.claims.waiting", &[]);
    assert!(
        !completing.is_finished(),
        "the exports were taken while the completion ran"
    );
    assert_eq!(
        during,
        Some(0.0),
        "no claim waits while the completion runs"
    );
    // Completed, the next claim waits for a job: now it counts.
    until(Duration::from_secs(5), "the next claim to count", || {
        receiver.value("jobd.claims.waiting", &[]) == Some(1.0)
    })
    .await;
    completing.abort();
    let (code, log) = jobd.terminate();
    assert_eq!(code, Some(0), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_its_deadline_is_recorded_as_deadline_exceeded() {
    let receiver = OtlpReceiver::start().await;
    let redis = RedisServer::start().await;
    let jobd = Running::start_with_env(&redis.url(), &[], &receiver.exporter_env("100")).await;
    let (mut jobs, mut workers) = bare_clients(jobd.address()).await;
    let claim = workers
        .claim_job(with_deadline(
            claim_request("nothing", Duration::from_secs(10)),
            "300m",
        ))
        .await;
    assert_eq!(claim.unwrap_err().code(), tonic::Code::DeadlineExceeded);
    let job = submit(&mut jobd.jobs().await, "q", b"").await;
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
        until(Duration::from_secs(10), method, || {
            recorded(method, "DEADLINE_EXCEEDED") == Some(1.0)
        })
        .await;
        assert_eq!(recorded(method, "CANCELLED"), None, "{method}");
    }
    let (code, log) = jobd.terminate();
    assert_eq!(code, Some(0), "{log}");
}
