//! Metric cardinality under abuse: made-up method paths record as `_OTHER`, and queue names
//! and job kinds past their caps fold into `_OTHER`, so the number of series stays bounded
//! however many distinct values clients send (10,000 kinds, 10,000 random method paths).

use std::{collections::BTreeSet, time::Duration};

use futures::{StreamExt, stream};

use jobd_client::proto;
use tonic::Code;

use crate::harness::*;

/// The queue cap the test sets (`--metrics-max-queues`); kinds keep jobd's default of 100.
const MAX_QUEUES: usize = 20;
const MAX_KINDS: usize = 100;

/// What jobd's telemetry may hold at once beside the memory model's counts, exporting every
/// 200 ms: the queue of spans waiting for export (2,048 at most, a few KiB each with their
/// attributes and events: 8 MiB) and the metric series under their caps (a few hundred),
/// doubled while an export encodes them.
const TELEMETRY: u64 = 16 * MIB;

/// The figures: distinct job kinds, and random method paths.
const KINDS: usize = 10_000;
const PATHS: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_kinds_queues_and_paths_do_not_grow_the_series() {
    let redis = RedisServer::start().await;
    let receiver = OtlpReceiver::start().await;
    let cap = format!("--metrics-max-queues={MAX_QUEUES}");
    // Calls queue up behind the abuse on a busy machine: they may wait, not fail.
    let mut env = receiver.exporter_env("200");
    env.push(("JOBD_REDIS_COMMAND_TIMEOUT", "10s"));
    let jobd = Running::start_with_env(&redis.url(), &[&cap], &env).await;
    let (mut jobs, _) = jobd.clients().await;
    let mut bystander = Bystander::new(&jobd).await;
    let baseline = bystander.baseline().await;
    let footprint = Footprint::start(jobd.pid(), &redis);
    let busy = bystander.keep_going();

    // 100 queues, each with a job of the kind "test.kind".
    let queues: Vec<_> = (0..100)
        .map(|i| submit_request(&format!("card.q{i}")))
        .collect();
    submit_jobs(&mut jobs, queues).await;
    // 10,000 distinct kinds, in one queue.
    for batch in 0..KINDS / 1000 {
        let requests = (0..1000)
            .map(|i| proto::SubmitJobRequest {
                kind: format!("kind.{batch}.{i}"),
                ..submit_request("card.kinds")
            })
            .collect();
        submit_jobs(&mut jobs, requests).await;
    }
    // 10,000 random method paths, of services that exist and services that do not.
    let channel = jobd.channel().await;
    let calls = (0..PATHS).map(|i| {
        let channel = channel.clone();
        let path = match i % 2 {
            0 => format!("/jobd.v1.JobService/Made{:08x}Up", rand_u32()),
            _ => format!("/made.up.{:08x}/Made{i}", rand_u32()),
        };
        async move { raw_call(channel, &path, Vec::new()).await }
    });
    let answers: Vec<_> = stream::iter(calls).buffer_unordered(64).collect().await;
    for answer in answers {
        assert_eq!(answer.unwrap_err().code(), Code::Unimplemented);
    }
    busy.assert_kept(&baseline).await;
    // jobd holds no stream or claim for this; the largest message in flight is a SubmitJobs
    // of 1,000 small jobs (under 1 MiB), and its telemetry holds what it exports. Redis holds
    // the 10,100 jobs.
    footprint.assert_peak_within(
        jobd_growth(0, 0, MIB) + TELEMETRY,
        REDIS_SLACK + (KINDS + 100) as u64 * REDIS_PER_JOB,
    );

    // Every submission counted: "test.kind" and 99 kinds more under the cap, the other 9,901
    // as `_OTHER` (in the queue `_OTHER` too: "card.kinds" came past the queue cap). The
    // bystander's kind is "test.kind" too.
    until(
        Duration::from_secs(20),
        "every call and job to be exported",
        || {
            let folded = [("jobd.job.kind", "_OTHER")];
            receiver.value("jobd.jobs.submitted", &folded) == Some(9901.0)
                && receiver
                    .value("rpc.server.call.duration", &[("rpc.method", "_OTHER")])
                    .is_some_and(|calls| calls >= PATHS as f64)
        },
    )
    .await;
    let submitted = receiver.series("jobd.jobs.submitted");
    let values = |attribute: &str| -> BTreeSet<String> {
        submitted
            .iter()
            .filter_map(|a| a.get(attribute).cloned())
            .collect()
    };
    assert!(
        values("jobd.queue").len() <= MAX_QUEUES + 1,
        "{:?}",
        values("jobd.queue")
    );
    assert!(
        values("jobd.job.kind").len() <= MAX_KINDS + 1,
        "{} kinds",
        values("jobd.job.kind").len()
    );
    assert!(
        submitted.len() <= (MAX_QUEUES + 1) + (MAX_KINDS + 1),
        "{} series",
        submitted.len()
    );

    let methods: BTreeSet<String> = receiver
        .series("rpc.server.call.duration")
        .iter()
        .filter_map(|a| a.get("rpc.method").cloned())
        .collect();
    assert!(methods.contains("_OTHER"), "{methods:?}");
    assert!(
        methods.iter().all(|m| m == "_OTHER" || !m.contains("Made")),
        "{methods:?}"
    );
    assert!(methods.len() <= 20, "{methods:?}");

    // Queue depths: the capped queues, and the rest summed as `_OTHER`.
    until(
        Duration::from_secs(20),
        "queue depths to be exported",
        || !receiver.series("jobd.queue.depth").is_empty(),
    )
    .await;
    let depths: BTreeSet<String> = receiver
        .series("jobd.queue.depth")
        .iter()
        .filter_map(|a| a.get("jobd.queue").cloned())
        .collect();
    assert!(depths.len() <= MAX_QUEUES + 1, "{depths:?}");
}
