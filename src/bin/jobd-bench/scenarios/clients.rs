//! The simulated clients the scenarios run: workers with a no-op handler, and submitters that
//! watch their own jobs to the terminal event.

use super::*;

/// Workers with a no-op handler, until `done`. With a batch of 1: ClaimJob, CompleteJob,
/// repeat. With more: ClaimJobs, then one CompleteJobs for the batch, claiming the next.
pub(super) async fn start_workers(
    systems: &Systems,
    queue: &str,
    count: usize,
    batch: u32,
    done: CancellationToken,
) -> anyhow::Result<JoinSet<()>> {
    let mut workers = JoinSet::new();
    for i in 0..count {
        let client = WorkerServiceClient::new(systems.channel().await?);
        let claim = proto::ClaimJobRequest {
            queues: vec![queue.to_owned()],
            worker_id: format!("bench-{i}"),
            lease: None,
            wait: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            ack_timeout: None,
        };
        if batch <= 1 {
            workers.spawn(single_worker(client, claim, done.clone()));
        } else {
            workers.spawn(batch_worker(client, claim, batch, done.clone()));
        }
    }
    Ok(workers)
}

pub(super) async fn single_worker(
    mut client: WorkerServiceClient<Transport>,
    claim: proto::ClaimJobRequest,
    done: CancellationToken,
) {
    while !done.is_cancelled() {
        let claimed = tokio::select! {
            claimed = client.claim_job(claim.clone()) => claimed,
            () = done.cancelled() => return,
        };
        let Ok(claimed) = claimed.map(tonic::Response::into_inner) else {
            continue;
        };
        let Some(job) = claimed.job else { continue };
        let _ = client
            .complete_job(proto::CompleteJobRequest {
                job_id: job.id,
                lease_token: claimed.lease_token,
                result: Default::default(),
                next: None,
            })
            .await;
    }
}

pub(super) async fn batch_worker(
    mut client: WorkerServiceClient<Transport>,
    claim: proto::ClaimJobRequest,
    batch: u32,
    done: CancellationToken,
) {
    // The next batch is claimed with the last completion, waiting as the first claim does:
    // one call per batch, and a worker with nothing to do parks in it.
    let claim = proto::ClaimJobsRequest {
        claim: Some(claim),
        max_jobs: batch,
    };
    let mut held: Vec<proto::ClaimedJob> = Vec::new();
    while !done.is_cancelled() {
        if held.is_empty() {
            let claimed = tokio::select! {
                claimed = client.claim_jobs(claim.clone()) => claimed,
                () = done.cancelled() => return,
            };
            if let Ok(claimed) = claimed {
                held = claimed.into_inner().jobs;
            }
            continue;
        }
        let completions = held
            .drain(..)
            .filter_map(|claimed| {
                Some(proto::Completion {
                    job_id: claimed.job?.id,
                    lease_token: claimed.lease_token,
                    result: Default::default(),
                })
            })
            .collect();
        let completed = tokio::select! {
            completed = client.complete_jobs(proto::CompleteJobsRequest {
                completions,
                next: Some(claim.clone()),
            }) => completed,
            () = done.cancelled() => return,
        };
        if let Ok(completed) = completed {
            held = completed.into_inner().next;
        }
    }
}

/// The job every scenario submits: a no-op of kind `bench`, every option at its default.
pub(super) fn bench_job(queue: &str) -> proto::SubmitJobRequest {
    proto::SubmitJobRequest {
        queue: queue.to_owned(),
        kind: "bench".to_owned(),
        ..Default::default()
    }
}

pub(super) async fn submit(
    jobs: &mut JobServiceClient<Transport>,
    queue: &str,
) -> anyhow::Result<String> {
    let response = jobs.submit_job(bench_job(queue)).await?.into_inner();
    Ok(response.job.map(|job| job.id).unwrap_or_default())
}

/// Submits `count` jobs in one SubmitJobs call; returns their ids.
pub(super) async fn submit_batch(
    jobs: &mut JobServiceClient<Transport>,
    queue: &str,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let request = bench_job(queue);
    let results = jobs
        .submit_jobs(proto::SubmitJobsRequest {
            jobs: vec![request; count],
        })
        .await?
        .into_inner()
        .results;
    Ok(results
        .into_iter()
        .filter_map(|r| r.job)
        .map(|job| job.id)
        .collect())
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
/// returns each job's milestones.
pub(super) async fn submit_and_watch_batch(
    jobs: &mut JobServiceClient<Transport>,
    queue: &str,
    count: usize,
) -> anyhow::Result<Vec<Phases>> {
    use proto::submit_and_watch_jobs_response::Message;
    let request = bench_job(queue);
    let mut stream = jobs
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
                match event.r#type() {
                    proto::EventType::Started => *started = Some(Instant::now()),
                    kind if is_terminal(kind) => *finished = Some(Instant::now()),
                    _ => {}
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

pub(super) fn is_terminal(kind: proto::EventType) -> bool {
    matches!(
        kind,
        proto::EventType::Completed | proto::EventType::Failed | proto::EventType::Cancelled
    )
}

/// Submits a job, then watches it until its terminal event; returns its milestones.
pub(super) async fn submit_and_watch_one(
    jobs: &mut JobServiceClient<Transport>,
    queue: &str,
) -> anyhow::Result<Phases> {
    let id = submit(jobs, queue).await?;
    let accepted = Instant::now();
    let (started, finished) = watch(jobs, id).await?;
    Ok(Phases {
        accepted,
        started,
        finished,
    })
}

/// Watches a job until its terminal event: when its STARTED event and its end arrived.
pub(super) async fn watch(
    jobs: &mut JobServiceClient<Transport>,
    id: String,
) -> anyhow::Result<(Option<Instant>, Instant)> {
    let mut stream = jobs
        .watch_job(proto::WatchJobRequest {
            job_id: id,
            after_sequence: 0,
        })
        .await?
        .into_inner();
    let mut started = None;
    while let Some(event) = stream.message().await? {
        if event.r#type() == proto::EventType::Started {
            started = Some(Instant::now());
        }
    }
    Ok((started, Instant::now()))
}

pub(super) fn unique_queue(scenario: &str) -> String {
    format!("bench-{scenario}-{}", std::process::id())
}
