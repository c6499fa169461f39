//! Refreshes the queue depths the `jobd.queue.depth` gauge reports: one read of each queue's
//! counts per metric export interval, however many exports or replicas ask.

use std::{collections::BTreeMap, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{domain::JobState, queues::QueueRegistry, store::JobStore, telemetry::QueueDepths};

pub async fn refresh_queue_depths(
    store: JobStore,
    registry: QueueRegistry,
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
        let queues = match registry.all().await {
            Ok(queues) => queues,
            Err(error) => {
                tracing::debug!(%error, "cannot read the queue registry for depths");
                continue;
            }
        };
        // The queues known now, and only they: a forgotten queue's series ends. A queue whose
        // read failed keeps its last depths.
        let mut known = BTreeMap::new();
        for queue in queues {
            match store.stats(&queue).await {
                Ok(stats) => {
                    known.insert(
                        queue,
                        vec![
                            (JobState::Queued, stats.queued),
                            (JobState::Scheduled, stats.scheduled),
                            (JobState::Running, stats.running),
                            (JobState::Completed, stats.completed),
                            (JobState::Failed, stats.failed),
                            (JobState::Cancelled, stats.cancelled),
                        ],
                    );
                }
                Err(error) => {
                    tracing::debug!(%error, queue = %queue, "cannot read queue depths");
                    if let Some(last) = depths.of(&queue) {
                        known.insert(queue, last);
                    }
                }
            }
        }
        depths.replace(known);
    }
}
