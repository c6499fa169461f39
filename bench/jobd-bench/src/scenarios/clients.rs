//! The simulated clients the scenarios run, on the Rust client library: workers
//! (`jobd_client::Worker` with a no-op handler) and submitters that follow their own jobs to
//! the terminal event (`submit` and `watch`, `submit_many`, `submit_and_wait`, and the raw
//! SubmitAndWatchJobs stub where a scenario needs a batch, or the milestones, of one call).

use super::*;

/// The kind of every job the scenarios submit: a no-op, every option at its default.
const KIND: &str = "bench";

/// How long a worker's claim waits for a job. A worker that stops lets its claim in flight run
/// to its end, so this bounds how long a scenario waits for its workers after its last job.
const CLAIM_WAIT: Duration = Duration::from_secs(1);

/// `count` workers, each a `jobd_client::Worker` on a connection of its own running up to
/// `slots` no-op handlers at once, until `done`. A worker claims for its free slots with
/// ClaimJobs (a long poll) and completes with CompleteJobs, whose `next` claims for the slots
/// free by then: with one slot, about one call per job under load.
pub(super) async fn start_workers(
    systems: &Systems,
    queue: &str,
    count: usize,
    slots: u32,
    done: CancellationToken,
) -> anyhow::Result<JoinSet<()>> {
    let mut workers = JoinSet::new();
    for i in 0..count {
        let worker = Worker::new(systems.connect().await?, [queue])
            .worker_id(format!("bench-{i}"))
            .concurrency(slots.max(1) as usize)
            .claim_wait(CLAIM_WAIT)
            .handle_signals(false)
            .handle(KIND, |_job: JobContext| async {
                Ok::<_, BoxError>(Bytes::new())
            });
        let done = done.clone();
        workers.spawn(async move {
            let _ = worker.run_until(done).await;
        });
    }
    Ok(workers)
}

/// The job every scenario submits.
pub(super) fn bench_job(queue: &str) -> JobSpec {
    JobSpec::new(queue, KIND)
}

/// Submits one job; returns its id.
pub(super) async fn submit(client: &Client, queue: &str) -> anyhow::Result<String> {
    Ok(client.submit(bench_job(queue)).await?.id)
}

/// Submits `count` jobs in one SubmitJobs call (`submit_many`); returns their ids.
pub(super) async fn submit_batch(
    client: &Client,
    queue: &str,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let jobs = client
        .submit_many(std::iter::repeat_n(bench_job(queue), count))
        .await?;
    Ok(jobs.into_iter().map(|job| job.id).collect())
}

/// Submits one job and waits for its outcome (`submit_and_wait`: one SubmitAndWatchJobs call).
pub(super) async fn submit_and_wait(client: &Client, queue: &str) -> anyhow::Result<()> {
    client.submit_and_wait(bench_job(queue)).await?;
    Ok(())
}

/// When a job's milestones were seen by its submitter.
#[derive(Debug, Clone, Copy)]
pub(super) struct Phases {
    /// The submit call answered.
    pub(super) accepted: Instant,
    /// Its STARTED event (of the last attempt) arrived.
    pub(super) started: Option<Instant>,
    /// Its terminal event arrived.
    pub(super) finished: Instant,
}

/// Submits `count` jobs with one SubmitAndWatchJobs call and reads the stream to its end;
/// returns each job's milestones. The library's `submit_and_wait` takes one job and returns
/// its outcome only: this scenario needs a batch per call, and when each job was accepted and
/// started, so it uses the generated stub on the library's connection.
pub(super) async fn submit_and_watch_batch(
    client: &Client,
    queue: &str,
    count: usize,
) -> anyhow::Result<Vec<Phases>> {
    use proto::submit_and_watch_jobs_response::Message;
    let request = proto::SubmitJobRequest {
        queue: queue.to_owned(),
        kind: KIND.to_owned(),
        ..Default::default()
    };
    let mut stream = client
        .jobs()
        .submit_and_watch_jobs(proto::SubmitJobsRequest {
            jobs: vec![request; count],
        })
        .await?
        .into_inner();
    let mut accepted = None;
    let mut seen: HashMap<String, (Option<Instant>, Option<Instant>)> = HashMap::new();
    while let Some(message) = stream.message().await? {
        match message.message {
            Some(Message::Submitted(_)) => accepted = Some(Instant::now()),
            Some(Message::Event(event)) => {
                let (started, finished) = seen.entry(event.job_id.clone()).or_default();
                if event.is_terminal() {
                    *finished = Some(Instant::now());
                } else if event.r#type() == EventType::Started {
                    *started = Some(Instant::now());
                }
            }
            None => {}
        }
    }
    let accepted = accepted.context("no submission results")?;
    let phases: Vec<Phases> = seen
        .into_values()
        .filter_map(|(started, finished)| {
            Some(Phases {
                accepted,
                started,
                finished: finished?,
            })
        })
        .collect();
    anyhow::ensure!(
        phases.len() == count,
        "{} terminal events for {count} jobs",
        phases.len()
    );
    Ok(phases)
}

/// Submits a job, then watches it until its terminal event; returns its milestones.
pub(super) async fn submit_and_watch_one(client: &Client, queue: &str) -> anyhow::Result<Phases> {
    let id = submit(client, queue).await?;
    let accepted = Instant::now();
    let (started, finished) = watch(client, id).await?;
    Ok(Phases {
        accepted,
        started,
        finished,
    })
}

/// Watches a job (`watch`) until its terminal event: when its STARTED event and its end
/// arrived.
pub(super) async fn watch(
    client: &Client,
    id: String,
) -> anyhow::Result<(Option<Instant>, Instant)> {
    let events = client.watch(id, 0);
    futures::pin_mut!(events);
    let mut started = None;
    while let Some(event) = events.next().await {
        if event?.r#type() == EventType::Started {
            started = Some(Instant::now());
        }
    }
    Ok((started, Instant::now()))
}

pub(super) fn unique_queue(scenario: &str) -> String {
    format!("bench-{scenario}-{}", std::process::id())
}
