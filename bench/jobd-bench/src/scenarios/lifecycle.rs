//! The lifecycle scenario: N jobs submitted with P calls in flight, W workers completing them,
//! a watcher per job; and the same run measured in Redis commands and CPU per job.

use super::*;

pub async fn lifecycle(args: LifecycleArgs) -> anyhow::Result<()> {
    report_runs("lifecycle", &args.target, args.runs, || {
        lifecycle_once(&args)
    })
    .await
}

/// One lifecycle run, on a fresh jobd and Redis (unless given ones).
pub(super) async fn lifecycle_once(args: &LifecycleArgs) -> anyhow::Result<Figures> {
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
    report_runs("redis-cost", &args.target, args.runs, || {
        redis_cost_once(&args)
    })
    .await
}

/// One redis-cost run, on a fresh jobd and Redis (unless given ones).
pub(super) async fn redis_cost_once(args: &LifecycleArgs) -> anyhow::Result<Figures> {
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
pub(super) async fn run_lifecycle(
    systems: &Systems,
    args: &LifecycleArgs,
) -> anyhow::Result<(Duration, Latencies)> {
    let queue = unique_queue("lifecycle");
    let done = CancellationToken::new();
    let workers = start_workers(systems, &queue, args.workers, args.batch, done.clone()).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..SUBMIT_CONNECTIONS {
        clients.push(systems.connect().await?);
    }
    let started = Instant::now();
    let mut submitters = JoinSet::new();
    for i in 0..args.in_flight {
        let client = clients[i % clients.len()].clone();
        submitters.spawn(submitter(client, queue.clone(), next.clone(), args.clone()));
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

/// One of the submitters in flight: takes the next `submit_batch` of the `jobs` in all from
/// `next`, submits them and watches each to its end, until none is left; the latency of each.
async fn submitter(
    client: Client,
    queue: String,
    next: Arc<AtomicUsize>,
    args: LifecycleArgs,
) -> anyhow::Result<Latencies> {
    let (total, batch) = (args.jobs, args.submit_batch);
    let mut latencies = Latencies::default();
    loop {
        let first = next.fetch_add(batch, Ordering::Relaxed);
        if first >= total {
            return Ok(latencies);
        }
        let count = batch.min(total - first);
        let sent = Instant::now();
        if args.submit_and_watch && batch <= 1 {
            submit_and_wait(&client, &queue).await?;
            latencies.push(sent.elapsed());
            continue;
        }
        if args.submit_and_watch {
            for phases in submit_and_watch_batch(&client, &queue, count).await? {
                latencies.push(phases.finished - sent);
            }
            continue;
        }
        if batch <= 1 {
            let phases = submit_and_watch_one(&client, &queue).await?;
            latencies.push(phases.finished - sent);
            continue;
        }
        let ids = submit_batch(&client, &queue, count).await?;
        let watches = ids.into_iter().map(|id| {
            let client = &client;
            async move {
                let (_, finished) = watch(client, id).await?;
                anyhow::Ok(finished - sent)
            }
        });
        for latency in futures::future::join_all(watches).await {
            latencies.push(latency?);
        }
    }
}
