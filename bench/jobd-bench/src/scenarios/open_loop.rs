//! The open-loop scenario: jobs submitted at a fixed rate, latency from the intended send time.

use super::*;

pub async fn open_loop(args: OpenLoopArgs) -> anyhow::Result<()> {
    report_runs("open-loop", &args.target, args.runs, || {
        open_loop_once(&args)
    })
    .await
}

/// One open-loop run, on a fresh jobd and Redis (unless given ones).
pub(super) async fn open_loop_once(args: &OpenLoopArgs) -> anyhow::Result<Figures> {
    let systems = Systems::start(&args.target).await?;
    let queue = unique_queue("open-loop");
    let done = CancellationToken::new();
    let workers = start_workers(&systems, &queue, args.workers, args.batch, done.clone()).await?;
    let mut clients = Vec::new();
    for _ in 0..SUBMIT_CONNECTIONS {
        clients.push(systems.connect().await?);
    }
    let total = (args.rate as f64 * args.duration.as_secs_f64()) as usize;
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    // Per job, from its intended send time: the submit's answer, STARTED, the terminal event.
    let latencies = Arc::new(Mutex::new(<[Latencies; 3]>::default()));
    let failures = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let (pacer, mut due) = pace(started, total, interval);
    let mut calls = JoinSet::new();
    let mut send_lag = Latencies::default();
    while let Some((i, intended)) = due.recv().await {
        send_lag.push(intended.elapsed());
        let client = clients[i % clients.len()].clone();
        let (queue, latencies, failures) = (queue.clone(), latencies.clone(), failures.clone());
        let submit_and_watch = args.submit_and_watch;
        calls.spawn(async move {
            match send(&client, &queue, submit_and_watch).await {
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
    let [accepted, running, finished] = std::mem::take(&mut *lock(&latencies));
    let failures = failures.load(Ordering::Relaxed);
    Ok(figures(
        args,
        total,
        elapsed,
        failures,
        send_lag,
        [accepted, running, finished],
    ))
}

/// What an open-loop run measured: per job, from its intended send time, the submit's answer,
/// STARTED and the terminal event.
fn figures(
    args: &OpenLoopArgs,
    total: usize,
    elapsed: Duration,
    failures: usize,
    mut send_lag: Latencies,
    [mut accepted, mut running, mut latencies]: [Latencies; 3],
) -> Figures {
    vec![
        ("rate_per_sec", json!(args.rate)),
        ("claim_batch", json!(args.batch)),
        ("submit_and_watch", json!(args.submit_and_watch)),
        ("jobs", json!(total)),
        (
            "achieved_per_sec",
            json!(latencies.len() as f64 / elapsed.as_secs_f64()),
        ),
        ("failures", json!(failures)),
        ("p50_ms", json!(latencies.percentile_ms(50.0))),
        ("p99_ms", json!(latencies.percentile_ms(99.0))),
        ("p999_ms", json!(latencies.percentile_ms(99.9))),
        ("send_lag_p50_ms", json!(send_lag.percentile_ms(50.0))),
        ("send_lag_p99_ms", json!(send_lag.percentile_ms(99.0))),
        ("accepted_p50_ms", json!(accepted.percentile_ms(50.0))),
        ("accepted_p99_ms", json!(accepted.percentile_ms(99.0))),
        ("started_p50_ms", json!(running.percentile_ms(50.0))),
        ("started_p99_ms", json!(running.percentile_ms(99.0))),
    ]
}

/// The schedule: job `i` is due at `started + interval * i`. Latency counts from when each job
/// should have been sent, so a server that falls behind cannot hide its queueing in the
/// benchmark's own. The schedule is kept by a thread of its own: tokio's timers tick in whole
/// milliseconds, which would send in bursts, late.
fn pace(
    started: Instant,
    total: usize,
    interval: Duration,
) -> (
    std::thread::JoinHandle<()>,
    tokio::sync::mpsc::UnboundedReceiver<(usize, Instant)>,
) {
    let (schedule, due) = tokio::sync::mpsc::unbounded_channel();
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
    (pacer, due)
}

/// Submits one job and watches it to its end, with SubmitAndWatchJobs or SubmitJob and
/// WatchJob.
async fn send(client: &Client, queue: &str, submit_and_watch: bool) -> anyhow::Result<Phases> {
    if submit_and_watch {
        submit_and_watch_batch(client, queue, 1)
            .await?
            .into_iter()
            .next()
            .context("no job")
    } else {
        submit_and_watch_one(client, queue).await
    }
}
