//! The worker runtime: cancellation within one heartbeat interval, a graceful shutdown that
//! loses nothing and costs no attempt, the shutdown deadline, and the example under SIGTERM.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use jobd_client::{BoxError, Client, EventType, JobContext, JobSpec, JobState, Worker};
use tokio::sync::Notify;

use crate::harness::{RunningWorker, Stack, eventually, queue};

/// The job's event types so far.
async fn event_types(client: &Client, job_id: &str) -> Vec<EventType> {
    let last = client.get(job_id).await.expect("the job").last_sequence;
    let mut types = Vec::new();
    let events = client.watch(job_id, 0);
    futures::pin_mut!(events);
    while let Some(event) = events.next().await {
        let event = event.expect("an event");
        types.push(event.r#type());
        if event.sequence >= last {
            break;
        }
    }
    types
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_jobs_handler_sees_it_within_one_heartbeat_interval() {
    let stack = Stack::start().await;
    let client = stack.client().await;
    let q = queue("cancel");
    let started = Arc::new(Notify::new());
    let seen: Arc<Mutex<Option<Instant>>> = Arc::default();
    let (started_in, seen_in) = (started.clone(), seen.clone());
    let worker = Worker::new(client.clone(), [q.clone()])
        .lease(Duration::from_secs(3))
        .claim_wait(Duration::from_secs(1))
        .handle_signals(false)
        .handle("long", move |job: JobContext| {
            let (started, seen) = (started_in.clone(), seen_in.clone());
            async move {
                started.notify_one();
                job.cancellation().cancelled().await;
                *seen.lock().unwrap() = Some(Instant::now());
                Ok::<_, BoxError>("stopped")
            }
        });
    let interval = worker.heartbeat_interval();
    assert_eq!(interval, Duration::from_secs(1));
    let running = RunningWorker::start(worker);
    let job = client
        .submit(JobSpec::new(&q, "long"))
        .await
        .expect("submitted");
    tokio::time::timeout(Duration::from_secs(10), started.notified())
        .await
        .expect("the handler starts");
    let cancel_sent = Instant::now();
    client.cancel(&job.id, "stop it").await.expect("cancelled");
    let seen_at = eventually(Duration::from_secs(5), "the handler to see it", || async {
        *seen.lock().unwrap()
    })
    .await;
    // One heartbeat interval, plus the heartbeat's own round trip (generous for a loaded CI).
    let took = seen_at - cancel_sent;
    assert!(
        took <= interval + Duration::from_millis(750),
        "took {took:?}"
    );
    running.stop().await;
    let done = client.get(&job.id).await.expect("the job");
    assert_eq!(done.state(), JobState::Cancelled);
    assert_eq!(done.cancel_reason, "stop it");
    assert!(
        done.result.is_empty(),
        "a cancelled job's result is not reported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_running_jobs_and_gives_back_claimed_ones_at_no_cost() {
    let stack = Stack::start().await;
    let client = stack.client().await;
    let q = queue("shutdown");
    let finish = Arc::new(Notify::new());
    let handled = Arc::new(AtomicUsize::new(0));
    let quick_ran = Arc::new(AtomicUsize::new(0));
    let (finish_in, handled_in, quick_in) = (finish.clone(), handled.clone(), quick_ran.clone());
    let worker = Worker::new(client.clone(), [q.clone()])
        .concurrency(4)
        .claim_wait(Duration::from_secs(5))
        .shutdown_timeout(Duration::from_secs(20))
        .handle_signals(false)
        .handle("slow", move |_job: JobContext| {
            let (finish, handled) = (finish_in.clone(), handled_in.clone());
            async move {
                handled.fetch_add(1, Ordering::SeqCst);
                finish.notified().await;
                Ok::<_, BoxError>("finished")
            }
        })
        .handle("quick", move |_job: JobContext| {
            let quick = quick_in.clone();
            async move {
                quick.fetch_add(1, Ordering::SeqCst);
                Ok::<_, BoxError>("must not run")
            }
        });
    let running = RunningWorker::start(worker);
    let slow = client
        .submit_many((0..2).map(|_| JobSpec::new(&q, "slow")))
        .await
        .expect("submitted");
    eventually(Duration::from_secs(10), "2 handlers running", || async {
        (handled.load(Ordering::SeqCst) == 2).then_some(())
    })
    .await;
    // The worker claimed for its 2 free slots as soon as the slow jobs started (nothing else
    // comes between); stop now, then feed that claim: what it brings must go back.
    running.begin_stop();
    let quick = client
        .submit_many((0..2).map(|_| JobSpec::new(&q, "quick")))
        .await
        .expect("submitted");
    // The claim returns with the first job (or both); once one is given back and none is
    // still held, the claim in flight has ended: no other claim comes.
    let released = [EventType::Queued, EventType::Started, EventType::Released];
    eventually(
        Duration::from_secs(15),
        "the claimed jobs to be given back",
        || async {
            let mut given_back = 0;
            for job in &quick {
                let types = event_types(&client, &job.id).await;
                match types.len() {
                    3 if types == released => given_back += 1,
                    1 => {}
                    _ => return None,
                }
            }
            (given_back >= 1).then_some(())
        },
    )
    .await;
    assert!(
        !running.is_finished(),
        "the worker waits for its running handlers"
    );
    finish.notify_waiters();
    finish.notify_waiters();
    running.stop().await;

    for job in &slow {
        let done = client.get(&job.id).await.expect("the job");
        assert_eq!(done.state(), JobState::Completed);
        assert_eq!(done.attempt, 1);
        assert_eq!(&done.result[..], b"finished");
    }
    for job in &quick {
        let back = client.get(&job.id).await.expect("the job");
        assert_eq!(back.state(), JobState::Queued, "given back, not lost");
        assert_eq!(back.attempt, 0, "a job given back costs no attempt");
        let types = event_types(&client, &job.id).await;
        assert!(
            types == released || types == [EventType::Queued],
            "{types:?}"
        );
    }
    assert_eq!(
        quick_ran.load(Ordering::SeqCst),
        0,
        "no handler starts once stopping"
    );

    // Nothing is lost: another worker does them, on their first attempt.
    let again = Worker::new(client.clone(), [q.clone()])
        .claim_wait(Duration::from_secs(1))
        .handle_signals(false)
        .handle("quick", |_job: JobContext| async {
            Ok::<_, BoxError>("done later")
        });
    let running = RunningWorker::start(again);
    for job in &quick {
        let events: Vec<_> = client.watch(&job.id, 0).collect().await;
        let last = events.last().expect("events").as_ref().expect("an event");
        assert_eq!(last.r#type(), EventType::Completed);
        assert_eq!(last.attempt, 1);
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_past_the_shutdown_deadline_are_dropped_and_their_jobs_given_back() {
    let stack = Stack::start().await;
    let client = stack.client().await;
    let q = queue("deadline");
    let started = Arc::new(Notify::new());
    let started_in = started.clone();
    let worker = Worker::new(client.clone(), [q.clone()])
        .concurrency(1)
        .claim_wait(Duration::from_secs(1))
        .shutdown_timeout(Duration::from_millis(500))
        .handle_signals(false)
        .handle("stuck", move |_job: JobContext| {
            let started = started_in.clone();
            async move {
                started.notify_one();
                std::future::pending::<()>().await;
                Ok::<_, BoxError>("never")
            }
        });
    let running = RunningWorker::start(worker);
    let job = client
        .submit(JobSpec::new(&q, "stuck"))
        .await
        .expect("submitted");
    tokio::time::timeout(Duration::from_secs(10), started.notified())
        .await
        .expect("starts");
    let stopping = Instant::now();
    running.stop().await;
    // The deadline (0.5 s), the claim in flight (up to its 1 s wait), the give-back: generous.
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "took {:?}",
        stopping.elapsed()
    );
    let back = client.get(&job.id).await.expect("the job");
    assert_eq!(back.state(), JobState::Queued);
    assert_eq!(back.attempt, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_worker_handles_jobs_and_stops_on_sigterm() {
    let stack = Stack::start().await;
    let client = stack.client().await;
    let q = queue("example");
    // cargo test builds the examples beside the test binaries' directory.
    let exe = std::env::current_exe().expect("the test binary");
    let example = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/debug")
        .join("examples/worker");
    assert!(
        example.exists(),
        "{} (built by cargo test)",
        example.display()
    );
    let mut child = std::process::Command::new(&example)
        .env("JOBD_ENDPOINT", stack.jobd.endpoint())
        .env("JOBD_QUEUE", &q)
        .spawn()
        .expect("the example runs");
    for to in ["ada@example.com", "grace@example.com"] {
        let payload = format!(r#"{{"to":"{to}"}}"#);
        let spec = JobSpec::new(&q, "welcome").payload(payload);
        let result = tokio::time::timeout(Duration::from_secs(20), client.submit_and_wait(spec))
            .await
            .expect("in time")
            .expect("a result");
        assert_eq!(
            String::from_utf8_lossy(&result),
            format!("welcome sent to {to}")
        );
    }
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let exited = eventually(Duration::from_secs(15), "the example to exit", || {
        std::future::ready(child.try_wait().ok().flatten())
    })
    .await;
    assert!(
        exited.success(),
        "the example exits cleanly on SIGTERM: {exited}"
    );
}
