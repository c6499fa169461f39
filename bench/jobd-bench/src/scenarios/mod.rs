//! The scenarios. Each drives jobd through gRPC only, with the Rust client library: submitters
//! that watch their own jobs to the terminal event, and workers with a no-op handler.

mod clients;
mod fan_out;
mod lifecycle;
mod open_loop;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{
    FanOutArgs, LifecycleArgs, OpenLoopArgs, Target,
    env::Systems,
    perimeter::Perimeter,
    report::{self, Figures, Latencies},
};
use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use jobd::sync::lock;
use jobd_client::{BoxError, Client, EventType, JobContext, JobSpec, Worker, proto};
use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Connections (`jobd_client::Client`s) the submitters share (HTTP/2 multiplexes their calls).
const SUBMIT_CONNECTIONS: usize = 4;

/// Runs a scenario `runs` times (at least once) and prints the runs' medians as `scenario`,
/// labelled with the perimeter of `target`.
async fn report_runs<Run, Fut>(
    scenario: &str,
    target: &Target,
    runs: usize,
    run: Run,
) -> anyhow::Result<()>
where
    Run: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<Figures>>,
{
    let mut figures = Vec::new();
    for _ in 0..runs.max(1) {
        figures.push(run().await?);
    }
    print_labelled(scenario, target, report::median(&figures));
    Ok(())
}

/// Prints a scenario's figures, led by the perimeter its clients went through (none for
/// plain, whose reports stay as they were before there was a choice).
fn print_labelled(scenario: &str, target: &Target, mut figures: Figures) {
    if let Some(label) = target.perimeter().label() {
        figures.insert(0, ("perimeter", json!(label)));
    }
    report::print(scenario, &figures);
}

/// Every scenario, each on a fresh jobd and Redis: the documented sizes, or `small` ones; each
/// but fan-out `runs` times, reporting the medians.
pub async fn all(small: bool, runs: usize, perimeter: Perimeter) -> anyhow::Result<()> {
    let target = Target {
        pool_size: 4,
        perimeter,
        ..Target::default()
    };
    let (jobs, rates, duration, watchers) = if small {
        (1_000, vec![200], Duration::from_secs(2), 500)
    } else {
        (20_000, vec![500, 2_000], Duration::from_secs(10), 10_000)
    };
    // Workers of one slot and submitters of one job (SubmitJob, WatchJob); workers of 8 slots
    // (ClaimJobs of up to 8, the next ones claimed with the completions); batching submitters
    // too (SubmitJobs of 8, a WatchJob per job); and batching submitters that watch on the
    // submit call (SubmitAndWatchJobs of 8).
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

use clients::*;
pub use fan_out::fan_out;
pub use lifecycle::{lifecycle, redis_cost};
pub use open_loop::open_loop;
