//! The scenarios. Each drives jobd through gRPC only: submitters that watch their own jobs to
//! the terminal event, and workers with a no-op handler.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use jobd::{
    api::proto::{
        self, job_service_client::JobServiceClient, worker_service_client::WorkerServiceClient,
    },
    sync::lock,
};
use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::{
    FanOutArgs, LifecycleArgs, OpenLoopArgs, Target,
    env::Systems,
    report::{self, Figures, Latencies},
};

/// Connections the submitters share (HTTP/2 multiplexes their calls).
const SUBMIT_CONNECTIONS: usize = 4;

/// Runs a scenario `runs` times (at least once) and prints the runs' medians as `scenario`.
async fn report_runs<Run, Fut>(scenario: &str, runs: usize, run: Run) -> anyhow::Result<()>
where
    Run: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<Figures>>,
{
    let mut figures = Vec::new();
    for _ in 0..runs.max(1) {
        figures.push(run().await?);
    }
    report::print(scenario, &report::median(&figures));
    Ok(())
}

pub async fn lifecycle(args: LifecycleArgs) -> anyhow::Result<()> {
    report_runs("lifecycle", args.runs, || lifecycle_once(&args)).await
}

/// One lifecycle run, on a fresh jobd and Redis (unless given ones).
async fn lifecycle_once(args: &LifecycleArgs) -> anyhow::Result<Figures> {
    let systems = Systems::start(&args.target).await?;
    let cpu_before = systems.cpu_us();
    let (elapsed, mut latencies) = run_lifecycle(&systems, args).await?;
    let cpu = systems.cpu_us().per_job_since(&cpu_before, args.jobs);
    let rate = args.jobs as f64 / elapsed.as_secs_f64();
    Ok(vec![
        ("jobs", json!(args.jobs)),
        ("in_flight", json!(args.in_flight)),
        ("workers", json!(args.workers)),
        ("claim_batch", json!(args.batch)),
        ("submit_batch", json!(args.submit_batch)),
        ("submit_and_watch", json!(args.submit_and_watch)),
        ("seconds", json!(elapsed.as_secs_f64())),
        ("jobs_per_sec", json!(rate)),
        ("p50_ms", json!(latencies.percentile_ms(50.0))),
        ("p99_ms", json!(latencies.percentile_ms(99.0))),
        ("p999_ms", json!(latencies.percentile_ms(99.9))),
        ("jobd_cpu_us_per_job", json!(cpu.jobd)),
        ("redis_cpu_us_per_job", json!(cpu.redis)),
        ("bench_cpu_us_per_job", json!(cpu.bench)),
    ])
}

pub async fn redis_cost(args: LifecycleArgs) -> anyhow::Result<()> {
    report_runs("redis-cost", args.runs, || redis_cost_once(&args)).await
}

/// One redis-cost run, on a fresh jobd and Redis (unless given ones).
async fn redis_cost_once(args: &LifecycleArgs) -> anyhow::Result<Figures> {
    let systems = Systems::start(&args.target).await?;
    // Warm up (scripts loaded, connections up) so that the counters see the steady state.
    let warm_up = LifecycleArgs {
        jobs: args.jobs.min(200),
        ..args.clone()
    };
    run_lifecycle(&systems, &warm_up).await?;
    let before = systems.redis_counters()?;
    let (elapsed, _) = run_lifecycle(&systems, args).await?;
    let after = systems.redis_counters()?;
    let jobs = args.jobs as f64;
    // Where Redis's time went, by command, most first: [command, calls, µs] per job. A script's
    // time holds that of the commands it ran, which are listed too.
    let mut by_command: Vec<(&str, f64, f64)> = after
        .by_command
        .iter()
        .map(|(name, &(calls, usec))| {
            let (calls_before, usec_before) =
                before.by_command.get(name).copied().unwrap_or_default();
            (
                name.as_str(),
                (calls - calls_before) as f64 / jobs,
                (usec - usec_before) as f64 / jobs,
            )
        })
        .filter(|&(_, calls, _)| calls > 0.0)
        .collect();
    by_command.sort_by(|a, b| b.2.total_cmp(&a.2));
    let round = |n: f64| (n * 100.0).round() / 100.0;
    let by_command: Vec<_> = by_command
        .into_iter()
        .map(|(name, calls, usec)| json!([name, round(calls), round(usec)]))
        .collect();
    Ok(vec![
        ("jobs", json!(args.jobs)),
        ("claim_batch", json!(args.batch)),
        ("submit_batch", json!(args.submit_batch)),
        ("submit_and_watch", json!(args.submit_and_watch)),
        ("seconds", json!(elapsed.as_secs_f64())),
        (
            "commands_per_job",
            json!((after.calls() - before.calls()) as f64 / jobs),
        ),
        (
            "redis_cpu_us_per_job",
            json!((after.cpu_us - before.cpu_us) / jobs),
        ),
        ("per_job_by_command", json!(by_command)),
    ])
}

/// N jobs, P submissions in flight, each submitter watching its job to the terminal event.
async fn run_lifecycle(
    systems: &Systems,
    args: &LifecycleArgs,
) -> anyhow::Result<(Duration, Latencies)> {
    let queue = unique_queue("lifecycle");
    let done = CancellationToken::new();
    let workers = start_workers(systems, &queue, args.workers, args.batch, done.clone()).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let mut channels = Vec::new();
    for _ in 0..SUBMIT_CONNECTIONS {
        channels.push(systems.channel().await?);
    }
    let started = Instant::now();
    let mut submitters = JoinSet::new();
    for i in 0..args.in_flight {
        let mut jobs = JobServiceClient::new(channels[i % channels.len()].clone());
        let (next, queue, total, batch) =
            (next.clone(), queue.clone(), args.jobs, args.submit_batch);
        let submit_and_watch = args.submit_and_watch;
        submitters.spawn(async move {
            let mut latencies = Latencies::default();
            loop {
                let first = next.fetch_add(batch, Ordering::Relaxed);
                if first >= total {
                    break;
                }
                let count = batch.min(total - first);
                let sent = Instant::now();
                if submit_and_watch {
                    for phases in submit_and_watch_batch(&mut jobs, &queue, count).await? {
                        latencies.push(phases.finished - sent);
                    }
                    continue;
                }
                if batch <= 1 {
                    let phases = submit_and_watch_one(&mut jobs, &queue).await?;
                    latencies.push(phases.finished - sent);
                    continue;
                }
                let ids = submit_batch(&mut jobs, &queue, count).await?;
                let watches = ids.into_iter().map(|id| {
                    let mut jobs = jobs.clone();
                    async move {
                        let (_, finished) = watch(&mut jobs, id).await?;
                        anyhow::Ok(finished - sent)
                    }
                });
                for latency in futures::future::join_all(watches).await {
                    latencies.push(latency?);
                }
            }
            anyhow::Ok(latencies)
        });
    }
    let mut latencies = Latencies::default();
    while let Some(result) = submitters.join_next().await {
        latencies.extend(result??);
    }
    let elapsed = started.elapsed();
    done.cancel();
    workers.join_all().await;
    Ok((elapsed, latencies))
}

pub async fn open_loop(args: OpenLoopArgs) -> anyhow::Result<()> {
    report_runs("open-loop", args.runs, || open_loop_once(&args)).await
}

/// One open-loop run, on a fresh jobd and Redis (unless given ones).
async fn open_loop_once(args: &OpenLoopArgs) -> anyhow::Result<Figures> {
    let systems = Systems::start(&args.target).await?;
    let queue = unique_queue("open-loop");
    let done = CancellationToken::new();
    let workers = start_workers(&systems, &queue, args.workers, args.batch, done.clone()).await?;
    let mut channels = Vec::new();
    for _ in 0..SUBMIT_CONNECTIONS {
        channels.push(systems.channel().await?);
    }
    let total = (args.rate as f64 * args.duration.as_secs_f64()) as usize;
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    // Per job, from its intended send time: the submit's answer, STARTED, the terminal event.
    let latencies = Arc::new(Mutex::new(<[Latencies; 3]>::default()));
    let failures = Arc::new(AtomicUsize::new(0));
    // Latency counts from when each job should have been sent, so a server that falls behind
    // cannot hide its queueing in the benchmark's own. The schedule is kept by a thread of its
    // own: tokio's timers tick in whole milliseconds, which would send in bursts, late.
    let (schedule, mut due) = tokio::sync::mpsc::unbounded_channel();
    let started = Instant::now();
    let pacer = std::thread::spawn(move || {
        for i in 0..total {
            let intended = started + interval * i as u32;
            if let Some(wait) = intended.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if schedule.send((i, intended)).is_err() {
                return;
            }
        }
    });
    let mut calls = JoinSet::new();
    let mut send_lag = Latencies::default();
    while let Some((i, intended)) = due.recv().await {
        send_lag.push(intended.elapsed());
        let mut jobs = JobServiceClient::new(channels[i % channels.len()].clone());
        let (queue, latencies, failures) = (queue.clone(), latencies.clone(), failures.clone());
        let submit_and_watch = args.submit_and_watch;
        calls.spawn(async move {
            let phases = if submit_and_watch {
                submit_and_watch_batch(&mut jobs, &queue, 1)
                    .await
                    .and_then(|phases| phases.into_iter().next().context("no job"))
            } else {
                submit_and_watch_one(&mut jobs, &queue).await
            };
            match phases {
                Ok(Phases {
                    accepted,
                    started: Some(started),
                    finished,
                }) => {
                    let mut latencies = lock(&latencies);
                    latencies[0].push(accepted - intended);
                    latencies[1].push(started - intended);
                    latencies[2].push(finished - intended);
                }
                Ok(_) | Err(_) => {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while calls.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    let _ = pacer.join();
    done.cancel();
    workers.join_all().await;
    let [mut accepted, mut running, mut latencies] = std::mem::take(&mut *lock(&latencies));
    Ok(vec![
        ("rate_per_sec", json!(args.rate)),
        ("claim_batch", json!(args.batch)),
        ("submit_and_watch", json!(args.submit_and_watch)),
        ("jobs", json!(total)),
        (
            "achieved_per_sec",
            json!(latencies.len() as f64 / elapsed.as_secs_f64()),
        ),
        ("failures", json!(failures.load(Ordering::Relaxed))),
        ("p50_ms", json!(latencies.percentile_ms(50.0))),
        ("p99_ms", json!(latencies.percentile_ms(99.0))),
        ("p999_ms", json!(latencies.percentile_ms(99.9))),
        ("send_lag_p50_ms", json!(send_lag.percentile_ms(50.0))),
        ("send_lag_p99_ms", json!(send_lag.percentile_ms(99.0))),
        ("accepted_p50_ms", json!(accepted.percentile_ms(50.0))),
        ("accepted_p99_ms", json!(accepted.percentile_ms(99.0))),
        ("started_p50_ms", json!(running.percentile_ms(50.0))),
        ("started_p99_ms", json!(running.percentile_ms(99.0))),
    ])
}

pub async fn fan_out(args: FanOutArgs) -> anyhow::Result<()> {
    let systems = Systems::start(&args.target).await?;
    let queue = unique_queue("fan-out");
    let mut jobs = JobServiceClient::new(systems.channel().await?);
    let mut ids = Vec::with_capacity(args.watchers);
    for _ in 0..args.watchers {
        ids.push(submit(&mut jobs, &queue).await?);
    }
    let rss_before = systems.jobd_rss_mib();

    let established = Arc::new(tokio::sync::Semaphore::new(0));
    let finished_at = Arc::new(Mutex::new(Vec::with_capacity(args.watchers)));
    let mut watchers = JoinSet::new();
    for chunk in ids.chunks(args.streams_per_connection.max(1)) {
        let channel = systems.channel().await?;
        for id in chunk {
            let mut client = JobServiceClient::new(channel.clone());
            let (id, established, finished_at) =
                (id.clone(), established.clone(), finished_at.clone());
            watchers.spawn(async move {
                let mut stream = client
                    .watch_job(proto::WatchJobRequest {
                        job_id: id,
                        after_sequence: 0,
                    })
                    .await?
                    .into_inner();
                stream.message().await?; // QUEUED: the stream is up.
                established.add_permits(1);
                while let Some(event) = stream.message().await? {
                    if event.r#type() == proto::EventType::Completed {
                        lock(&finished_at).push(Instant::now());
                    }
                }
                anyhow::Ok(())
            });
        }
    }
    let _ = established.acquire_many(args.watchers as u32).await?;
    let rss = systems.jobd_rss_mib();
    let connections = systems.jobd_connections()?;

    let started = Instant::now();
    let done = CancellationToken::new();
    let workers = start_workers(&systems, &queue, 16, 1, done.clone()).await?;
    while let Some(result) = watchers.join_next().await {
        result??;
    }
    let last = lock(&finished_at).iter().max().copied().unwrap_or(started);
    done.cancel();
    workers.join_all().await;
    report::print(
        "fan-out",
        &[
            ("watchers", json!(args.watchers)),
            ("jobd_rss_mib_before_watchers", json!(rss_before)),
            ("jobd_rss_mib_with_watchers", json!(rss)),
            ("jobd_redis_connections", json!(connections)),
            (
                "seconds_to_last_terminal_event",
                json!((last - started).as_secs_f64()),
            ),
        ],
    );
    Ok(())
}

/// Every scenario, each on a fresh jobd and Redis: the documented sizes, or `small` ones; each
/// but fan-out `runs` times, reporting the medians.
pub async fn all(small: bool, runs: usize) -> anyhow::Result<()> {
    let target = Target {
        pool_size: 4,
        ..Target::default()
    };
    let (jobs, rates, duration, watchers) = if small {
        (1_000, vec![200], Duration::from_secs(2), 500)
    } else {
        (20_000, vec![500, 2_000], Duration::from_secs(10), 10_000)
    };
    // Plain clients (SubmitJob, WatchJob, ClaimJob, CompleteJob); batching workers (ClaimJobs
    // of 8, the next batch claimed with the last completion); batching submitters too
    // (SubmitJobs of 8, a WatchJob per job); and batching submitters that watch on the submit
    // call (SubmitAndWatchJobs of 8).
    for (batch, submit_batch, submit_and_watch) in
        [(1, 1, false), (8, 1, false), (8, 8, false), (8, 8, true)]
    {
        let lifecycle_args = LifecycleArgs {
            target: target.clone(),
            jobs,
            in_flight: 64,
            workers: 16,
            batch,
            submit_batch,
            submit_and_watch,
            runs,
        };
        lifecycle(lifecycle_args.clone()).await?;
        redis_cost(lifecycle_args).await?;
    }
    for rate in rates {
        for submit_and_watch in [false, true] {
            open_loop(OpenLoopArgs {
                target: target.clone(),
                rate,
                duration,
                workers: 16,
                batch: 8,
                submit_and_watch,
                runs,
            })
            .await?;
        }
    }
    fan_out(FanOutArgs {
        target,
        watchers,
        streams_per_connection: 100,
    })
    .await
}

/// Workers with a no-op handler, until `done`. With a batch of 1: ClaimJob, CompleteJob,
/// repeat. With more: ClaimJobs, then one CompleteJobs for the batch, claiming the next.
async fn start_workers(
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

async fn single_worker(
    mut client: WorkerServiceClient<Channel>,
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

async fn batch_worker(
    mut client: WorkerServiceClient<Channel>,
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
fn bench_job(queue: &str) -> proto::SubmitJobRequest {
    proto::SubmitJobRequest {
        queue: queue.to_owned(),
        kind: "bench".to_owned(),
        ..Default::default()
    }
}

async fn submit(jobs: &mut JobServiceClient<Channel>, queue: &str) -> anyhow::Result<String> {
    let response = jobs.submit_job(bench_job(queue)).await?.into_inner();
    Ok(response.job.map(|job| job.id).unwrap_or_default())
}

/// Submits `count` jobs in one SubmitJobs call; returns their ids.
async fn submit_batch(
    jobs: &mut JobServiceClient<Channel>,
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
struct Phases {
    /// The submit call answered.
    accepted: Instant,
    /// Its STARTED event (of the last attempt) arrived.
    started: Option<Instant>,
    /// Its terminal event arrived.
    finished: Instant,
}

/// Submits `count` jobs with one SubmitAndWatchJobs call and reads the stream to its end;
/// returns each job's milestones.
async fn submit_and_watch_batch(
    jobs: &mut JobServiceClient<Channel>,
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

fn is_terminal(kind: proto::EventType) -> bool {
    matches!(
        kind,
        proto::EventType::Completed | proto::EventType::Failed | proto::EventType::Cancelled
    )
}

/// Submits a job, then watches it until its terminal event; returns its milestones.
async fn submit_and_watch_one(
    jobs: &mut JobServiceClient<Channel>,
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
async fn watch(
    jobs: &mut JobServiceClient<Channel>,
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

fn unique_queue(scenario: &str) -> String {
    format!("bench-{scenario}-{}", std::process::id())
}
