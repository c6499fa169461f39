//! The fan-out scenario: many concurrent WatchJob streams, then their jobs complete.

use super::*;

pub async fn fan_out(args: FanOutArgs) -> anyhow::Result<()> {
    let systems = Systems::start(&args.target).await?;
    let queue = unique_queue("fan-out");
    let client = systems.connect().await?;
    let mut ids = Vec::with_capacity(args.watchers);
    for _ in 0..args.watchers {
        ids.push(submit(&client, &queue).await?);
    }
    let rss_before = systems.jobd_rss_mib();

    let established = Arc::new(tokio::sync::Semaphore::new(0));
    let finished_at = Arc::new(Mutex::new(Vec::with_capacity(args.watchers)));
    let mut watchers = JoinSet::new();
    for chunk in ids.chunks(args.streams_per_connection.max(1)) {
        let connection = systems.connect().await?;
        for id in chunk {
            let client = connection.clone();
            let (established, finished_at) = (established.clone(), finished_at.clone());
            watchers.spawn(watch_to_completion(
                client,
                id.clone(),
                established,
                finished_at,
            ));
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
    print_labelled(
        "fan-out",
        &args.target,
        vec![
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

/// Watches job `id` (`watch`): adds a permit to `established` once the stream is up (its
/// QUEUED event arrived), then records when the COMPLETED event arrives.
async fn watch_to_completion(
    client: Client,
    id: String,
    established: Arc<tokio::sync::Semaphore>,
    finished_at: Arc<Mutex<Vec<Instant>>>,
) -> anyhow::Result<()> {
    let events = client.watch(id, 0);
    futures::pin_mut!(events);
    events.next().await.context("no QUEUED event")??; // The stream is up.
    established.add_permits(1);
    while let Some(event) = events.next().await {
        if event?.r#type() == EventType::Completed {
            lock(&finished_at).push(Instant::now());
        }
    }
    Ok(())
}
