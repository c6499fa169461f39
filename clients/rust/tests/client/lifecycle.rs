//! Submit → worker → outcome: results, failures, non-retryable errors, batches, `watch`.

use std::time::Duration;

use futures::StreamExt;
use jobd_client::{
    BoxError, Error, EventType, JobContext, JobSpec, JobState, NonRetryable, Worker, proto,
};

use crate::harness::{RunningWorker, Stack, queue};

fn no_backoff() -> proto::BackoffPolicy {
    proto::BackoffPolicy {
        initial: Some(prost_types::Duration::default()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_completes_fails_and_batches_jobs() {
    let stack = Stack::start().await;
    let client = stack.client().await;
    let q = queue("life");
    let worker = Worker::new(client.clone(), [q.clone()])
        .concurrency(8)
        .claim_wait(Duration::from_secs(1))
        .handle_signals(false)
        .handle("upper", |job: JobContext| async move {
            Ok(job.text().to_uppercase())
        })
        .handle("flaky", |job: JobContext| async move {
            Err::<String, BoxError>(format!("attempt {} failed", job.job().attempt).into())
        })
        .handle("fatal", |_job: JobContext| async move {
            Err::<String, BoxError>(NonRetryable::new("bad input").into())
        });
    let running = RunningWorker::start(worker);

    let result = client
        .submit_and_wait(JobSpec::new(&q, "upper").payload("hello"))
        .await
        .expect("a result");
    assert_eq!(&result[..], b"HELLO");

    let spec = JobSpec::new(&q, "flaky")
        .max_attempts(2)
        .backoff(no_backoff());
    match client.submit_and_wait(spec).await {
        Err(Error::JobFailed { error, attempt, .. }) => {
            assert_eq!(attempt, 2, "retried once, then failed for good");
            assert_eq!(error, "attempt 2 failed");
        }
        other => panic!("expected JobFailed, got {other:?}"),
    }
    match client
        .submit_and_wait(JobSpec::new(&q, "fatal").max_attempts(3))
        .await
    {
        Err(Error::JobFailed { error, attempt, .. }) => {
            assert_eq!(attempt, 1, "a non-retryable error uses no further attempt");
            assert_eq!(error, "bad input");
        }
        other => panic!("expected JobFailed, got {other:?}"),
    }
    match client
        .submit_and_wait(JobSpec::new(&q, "unknown-kind"))
        .await
    {
        Err(Error::JobFailed {
            attempt: 1, error, ..
        }) => assert!(error.contains("no handler")),
        other => panic!("expected JobFailed, got {other:?}"),
    }

    // 200 jobs at once: every one completed once, with its own result. Under load a claim
    // may go unacknowledged past its deadline (RELEASED) or a lease may run out (RETRY_SCHEDULED
    // and a new attempt): at-least-once delivery, which the log records in order.
    let specs = (0..200).map(|i| JobSpec::new(&q, "upper").payload(format!("job {i}")));
    let jobs = client.submit_many(specs).await.expect("submitted");
    assert_eq!(jobs.len(), 200);
    for (i, job) in jobs.iter().enumerate() {
        let events: Vec<_> = client.watch(&job.id, 0).collect().await;
        let events: Vec<_> = events.into_iter().map(|e| e.expect("an event")).collect();
        assert_completed_once(&events, format!("JOB {i}").as_bytes());
    }
    let done = client.get(&jobs[0].id).await.expect("the job");
    assert_eq!(done.state(), JobState::Completed);

    running.stop().await;
}

/// What a job run by a worker promises, whatever its claims' timing: its log from sequence 1
/// without gap, QUEUED first, then claims (STARTED) and their ends that give the job back
/// (RELEASED, RETRY_SCHEDULED, QUEUED again), and last the one COMPLETED, of the last
/// claim's attempt, with `result`.
fn assert_completed_once(events: &[jobd_client::JobEvent], result: &[u8]) {
    let types: Vec<_> = events.iter().map(|e| e.r#type()).collect();
    let sequences: Vec<_> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (1..=events.len() as u64).collect::<Vec<_>>());
    assert_eq!(types.first(), Some(&EventType::Queued), "{types:?}");
    assert_eq!(types.last(), Some(&EventType::Completed), "{types:?}");
    let between = &types[1..types.len() - 1];
    assert!(
        between.iter().all(|t| matches!(
            t,
            EventType::Started
                | EventType::Released
                | EventType::RetryScheduled
                | EventType::Queued
        )),
        "{types:?}"
    );
    assert_eq!(between.last(), Some(&EventType::Started), "{types:?}");
    let completed = events.last().unwrap();
    let started = &events[events.len() - 2];
    assert_eq!(completed.result, result);
    assert_eq!(completed.attempt, started.attempt, "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_get_cancel_and_watch_from_a_sequence() {
    let stack = Stack::start().await;
    let client = stack.client().await;
    let q = queue("calls");
    let job = client
        .submit(JobSpec::new(&q, "k").payload("p").priority(5))
        .await
        .expect("submitted");
    assert_eq!(job.state(), JobState::Queued);
    let read = client.get(&job.id).await.expect("read");
    assert_eq!(&read.payload[..], b"p");
    assert_eq!(read.priority, 5);
    let cancelled = client
        .cancel(&job.id, "not needed")
        .await
        .expect("cancelled");
    assert_eq!(cancelled.state(), JobState::Cancelled);
    let events: Vec<_> = client.watch(&job.id, 1).collect().await;
    assert_eq!(events.len(), 1, "only the events after sequence 1");
    let last = events[0].as_ref().expect("an event");
    assert_eq!(last.r#type(), EventType::Cancelled);
    assert_eq!(last.reason, "not needed");
    // From its last sequence, a finished job's watch ends at once with nothing: jobd ends the
    // stream with OK, and GetJob says the job is over (no resumes, no UNAVAILABLE).
    let after_last = client.watch(&job.id, last.sequence).collect::<Vec<_>>();
    let events = tokio::time::timeout(Duration::from_secs(2), after_last)
        .await
        .expect("the watch ends promptly");
    assert!(events.is_empty(), "no event after the last: {events:?}");
    // submit_and_wait of a job cancelled while it waits: JobCancelled with the reason.
    let waiting = tokio::spawn({
        let client = client.clone();
        let spec = JobSpec::new(&q, "never-claimed");
        async move { client.submit_and_wait(spec).await }
    });
    let queued = crate::harness::eventually(Duration::from_secs(10), "the job", || {
        let client = client.clone();
        let q = q.clone();
        async move {
            let mut stub = client.jobs();
            let request = proto::ListJobsRequest {
                queue: q,
                ..Default::default()
            };
            let page = stub.list_jobs(request).await.ok()?.into_inner();
            page.jobs.into_iter().find(|j| j.kind == "never-claimed")
        }
    })
    .await;
    client
        .cancel(&queued.id, "changed my mind")
        .await
        .expect("cancelled");
    match tokio::time::timeout(Duration::from_secs(10), waiting).await {
        Ok(Ok(Err(Error::JobCancelled { job_id, reason }))) => {
            assert_eq!(job_id, queued.id);
            assert_eq!(reason, "changed my mind");
        }
        other => panic!("expected JobCancelled, got {other:?}"),
    }
}
