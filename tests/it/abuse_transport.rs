//! HTTP/2 and TCP under abuse and behind load balancers: one connection cannot open more
//! streams than its limit, nor a client more connections than theirs, quiet calls survive a proxy that cuts idle connections (jobd's
//! keepalive PINGs), and a connection past its age gets GOAWAY, its calls finishing within the
//! grace.

use std::time::{Duration, Instant};

use jobd_client::proto::{self, submit_job_request::Start};
use tokio::task::JoinSet;
use tonic::Code;

use crate::harness::*;

/// jobd's default `--max-concurrent-streams`.
const MAX_STREAMS: f64 = 256.0;

/// The most jobd's resident memory may reach then: half the base Deployment's limit.
const RSS_BOUND: u64 = 128 * 1024 * 1024;

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// A job in `queue` that starts in a year: a WatchJob on it stays open.
fn delayed_by_a_year(queue: &str) -> proto::SubmitJobRequest {
    proto::SubmitJobRequest {
        start: Some(Start::Delay(pb_duration(YEAR))),
        ..submit_request(queue)
    }
}

#[tokio::test]
async fn one_connection_cannot_open_more_streams_than_its_limit() {
    let redis = RedisServer::start().await;
    let receiver = OtlpReceiver::start().await;
    let jobd = Running::start_with_env(&redis.url(), &[], &receiver.exporter_env("200")).await;
    let mut jobs = jobd.jobs().await;
    let job = submit_with(&mut jobs, delayed_by_a_year("abuse.year"))
        .await
        .job
        .unwrap();

    let mut bystander = Bystander::new(&jobd).await;
    let baseline = bystander.baseline().await;
    let footprint = Footprint::start(jobd.pid(), &redis);
    let busy = bystander.keep_going();
    // 20,000 WatchJob calls on one connection, each held open.
    let connection = jobd.client().await;
    let mut calls = JoinSet::new();
    for _ in 0..20_000 {
        let mut client = connection.jobs();
        let request = proto::WatchJobRequest {
            job_id: job.id.clone(),
            after_sequence: 0,
        };
        calls.spawn(async move {
            let stream = client.watch_job(request).await;
            std::future::pending::<()>().await;
            drop(stream);
        });
    }
    let open = || receiver.value("jobd.watch.streams", &[]).unwrap_or(0.0);
    until(
        Duration::from_secs(30),
        "the admitted streams to open",
        || open() == MAX_STREAMS,
    )
    .await;
    // Proving the limit holds over time: the client keeps trying for 2 s, on a connection that
    // lives (the admitted streams stay open).
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(open(), MAX_STREAMS, "streams open");
    }

    // A well-behaved client on a connection of its own kept its latency meanwhile.
    busy.assert_kept(&baseline).await;
    // Only the admitted streams take memory, not the calls the client queues; Redis holds
    // nothing more for them (they watch one job).
    let peak = footprint.assert_peak_within(jobd_growth(MAX_STREAMS as u64, 0, 0), REDIS_SLACK);
    assert!(
        peak.rss < RSS_BOUND,
        "jobd's RSS reached {} bytes",
        peak.rss
    );

    // The abusive client goes away: its streams end.
    drop(calls);
    drop(connection);
    until(Duration::from_secs(20), "the streams to close", || {
        open() == 0.0
    })
    .await;
}

/// An idle timeout as most load balancers have.
const PROXY_IDLE: Duration = Duration::from_secs(60);

/// How long the calls below stay quiet: twice the proxy's idle timeout.
const QUIET: Duration = Duration::from_secs(120);

#[tokio::test]
async fn a_quiet_watch_survives_a_proxy_that_cuts_idle_connections() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let proxy = IdleCuttingProxy::start(server.addr, PROXY_IDLE).await;
    let (mut jobs, mut workers) = server.clients().await;
    let job = submit(&mut jobs, "idle.watch", b"").await;
    let mut through = connect(&proxy.url()).await.jobs();
    let mut stream = open_watch(&mut through, &job.id).await;

    // The idle period itself: nothing but jobd's keepalive goes through.
    tokio::time::sleep(QUIET).await;
    assert_eq!(proxy.cuts(), 0, "the proxy cut the quiet connection");

    let claimed = claim(&mut workers, "idle.watch").await;
    complete(&mut workers, &claimed, b"done").await.unwrap();
    let completed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let event = stream
                .message()
                .await
                .expect("the watch is still open")
                .expect("the watch goes on until the terminal event");
            if event.r#type() == proto::EventType::Completed {
                return event;
            }
        }
    })
    .await
    .expect("the terminal event arrives");
    assert_eq!(completed.job_id, job.id);
}

#[tokio::test]
async fn a_long_poll_claim_survives_a_proxy_that_cuts_idle_connections() {
    let redis = RedisServer::start().await;
    let settings = Settings {
        extra: vec!["--max-claim-wait=150s".into()],
        ..Settings::default()
    };
    let server = TestServer::start_with(&redis.url(), settings).await;
    let proxy = IdleCuttingProxy::start(server.addr, PROXY_IDLE).await;
    let through = connect(&proxy.url()).await.workers();
    let claim = claim_in_background(
        through,
        claim_request("idle.claim", QUIET + Duration::from_secs(20)),
    );
    claims_waiting(&server, 1).await;

    // The idle period itself: nothing but jobd's keepalive goes through.
    tokio::time::sleep(QUIET).await;
    assert_eq!(proxy.cuts(), 0, "the proxy cut the quiet connection");

    let mut jobs = server.jobs().await;
    let job = submit(&mut jobs, "idle.claim", b"").await;
    let claimed = tokio::time::timeout(Duration::from_secs(10), claim)
        .await
        .expect("the claim answers")
        .unwrap()
        .expect("the claim succeeds")
        .into_inner();
    assert_eq!(claimed.job.unwrap().id, job.id);
}

fn aged(age: &str, grace: &str) -> Settings {
    Settings {
        extra: vec![
            format!("--max-connection-age={age}"),
            format!("--max-connection-age-grace={grace}"),
        ],
        ..Settings::default()
    }
}

#[tokio::test]
async fn a_connection_past_its_age_gets_goaway_and_its_calls_finish() {
    let redis = RedisServer::start().await;
    let server = TestServer::start_with(&redis.url(), aged("1s", "30s")).await;
    let address = server.addr.to_string();
    let (connection, served) = BareConnection::open_watched(&address).await;
    let (jobs, mut workers) = connection.clients(&address);
    let claim = tokio::spawn(async move {
        workers
            .claim_job(claim_request("age.q", Duration::from_secs(20)))
            .await
    });
    claims_waiting(&server, 1).await;

    // After GOAWAY, the connection takes no new call; the claim under way goes on.
    eventually(Duration::from_secs(5), "GOAWAY", || {
        let mut jobs = jobs.clone();
        async move {
            let request = proto::GetQueueStatsRequest {
                queue: "age.q".into(),
            };
            jobs.get_queue_stats(request).await.is_err().then_some(())
        }
    })
    .await;
    assert!(!claim.is_finished(), "the claim under way was cut");

    let mut direct = server.jobs().await;
    let job = submit(&mut direct, "age.q", b"").await;
    let claimed = tokio::time::timeout(Duration::from_secs(5), claim)
        .await
        .expect("the claim answers")
        .unwrap()
        .expect("the call under way completes after GOAWAY")
        .into_inner();
    assert_eq!(claimed.job.unwrap().id, job.id);
    // Its last call done, the connection closes.
    tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .expect("the old connection closes")
        .unwrap()
        .expect("it closed cleanly");
}

#[tokio::test]
async fn a_connection_past_its_age_and_grace_is_closed() {
    let redis = RedisServer::start().await;
    let server = TestServer::start_with(&redis.url(), aged("1s", "1s")).await;
    let mut jobs = server.jobs().await;
    let job = submit_with(&mut jobs, delayed_by_a_year("grace.q"))
        .await
        .job
        .unwrap();
    let address = server.addr.to_string();
    let opened = Instant::now();
    let (connection, served) = BareConnection::open_watched(&address).await;
    let (mut through, _) = connection.clients(&address);
    let mut stream = through
        .watch_job(proto::WatchJobRequest {
            job_id: job.id,
            after_sequence: 0,
        })
        .await
        .expect("the watch opens")
        .into_inner();
    stream.message().await.expect("the first event").unwrap();

    let ended = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the watch ends with its connection");
    assert!(ended.is_err(), "the watch was cut, not ended: {ended:?}");
    let lived = opened.elapsed();
    assert!(lived >= Duration::from_millis(1900), "cut after {lived:?}");
    // Closed by the server, calls under way and all.
    let closed = tokio::time::timeout(Duration::from_secs(5), served).await;
    assert!(closed.is_ok(), "the connection is still open");
}

/// Whether a new connection to `url` is served: a call on it gets jobd's answer
/// (INVALID_ARGUMENT for a job id that is not one), not a closed connection.
async fn served(url: &str) -> Result<jobd_client::Client, tonic::Status> {
    let client = client_builder(url)
        .connect()
        .await
        .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
    let request = proto::GetJobRequest {
        job_id: "not-a-job-id".to_owned(),
    };
    match client.jobs().get_job(request).await {
        Err(status) if status.code() == tonic::Code::InvalidArgument => Ok(client),
        Ok(_) => panic!("no such job"),
        Err(status) => Err(status),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_closed_and_a_closed_one_gives_its_place_back() {
    const LIMIT: usize = 200;
    let redis = RedisServer::start().await;
    let limit = format!("--max-connections={LIMIT}");
    let jobd = Running::start_with_env(&redis.url(), &[&limit], &[]).await;
    // The bystander's two connections are among those served.
    let mut bystander = Bystander::new(&jobd).await;
    let baseline = bystander.baseline().await;
    let footprint = Footprint::start(jobd.pid(), &redis);
    let before = rss_of(jobd.pid());
    let busy = bystander.keep_going();

    // The rest of the limit, each connection served; then every further one is closed.
    let mut held = Vec::new();
    for _ in 0..LIMIT - 2 {
        held.push(
            served(&jobd.url())
                .await
                .expect("a connection under the limit"),
        );
    }
    let grown = rss_of(jobd.pid()).saturating_sub(before);
    eprintln!(
        "RSS grew by {grown} B for {} connections ({} B each)",
        held.len(),
        grown / held.len() as u64
    );
    for attempt in 0..20 {
        let refused = served(&jobd.url()).await.err();
        let refused = refused.unwrap_or_else(|| panic!("attempt {attempt} served past the limit"));
        // As tonic codes a connection closed under a call.
        let code = refused.code();
        assert!(
            matches!(code, Code::Unavailable | Code::Unknown | Code::Cancelled),
            "{refused:?}"
        );
    }
    busy.assert_kept(&baseline).await;
    footprint.assert_peak_within(LIMIT as u64 * PER_CONNECTION + JOBD_SLACK, REDIS_SLACK);

    // A connection that closes gives its place back.
    held.truncate(held.len() - 1);
    let url = jobd.url();
    eventually(Duration::from_secs(10), "a place to be given back", || {
        let url = url.clone();
        async move { served(&url).await.ok() }
    })
    .await;
}
