//! Refreshes the queue depths the `jobd.queue.depth` gauge reports: one read of each queue's
//! counts per metric export interval, however many exports or replicas ask. The queues are
//! those of the due index, read in pages, and each page's counts in one more round trip; a
//! forgotten queue leaves the gauge.

use std::{collections::BTreeMap, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{domain::JobState, store::JobStore, telemetry::QueueDepths};

/// Queues read from the due index per round trip, and counted per round trip.
const PAGE: i64 = 1000;

pub async fn refresh_queue_depths(
    store: JobStore,
    depths: QueueDepths,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shutdown.cancelled() => return,
        }
        if let Some(known) = read_depths(&store, &depths).await {
            depths.replace(known);
        }
    }
}

/// The depths of the queues known now, and only they: a forgotten queue's series ends. A queue
/// whose read failed keeps its last depths; if the index cannot be read, nothing changes.
async fn read_depths(
    store: &JobStore,
    depths: &QueueDepths,
) -> Option<BTreeMap<crate::domain::QueueName, Vec<(JobState, u64)>>> {
    let mut known = BTreeMap::new();
    let mut start = 0;
    loop {
        let page = match store.indexed_page(start, PAGE).await {
            Ok(page) => page,
            Err(error) => {
                tracing::debug!(%error, "cannot read the due index for depths");
                return None;
            }
        };
        let last = (page.len() as i64) < PAGE;
        start += PAGE;
        let counted = store.stats_each(&page).await;
        for (queue, stats) in page.into_iter().zip(counted) {
            match stats {
                Ok(stats) => {
                    let counts = vec![
                        (JobState::Queued, stats.queued),
                        (JobState::Scheduled, stats.scheduled),
                        (JobState::Running, stats.running),
                        (JobState::Completed, stats.completed),
                        (JobState::Failed, stats.failed),
                        (JobState::Cancelled, stats.cancelled),
                    ];
                    known.insert(queue, counts);
                }
                Err(error) => {
                    tracing::debug!(%error, queue = %queue, "cannot read queue depths");
                    if let Some(last) = depths.of(&queue) {
                        known.insert(queue, last);
                    }
                }
            }
        }
        if last {
            return Some(known);
        }
    }
}
