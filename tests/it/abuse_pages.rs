//! The abuse suite's page tokens (issue 20, item 8): ListJobs tokens are not signed, so a
//! client may forge them or pass one to another listing. Thousands of forged tokens, and
//! tokens of other queues, states and page sizes, get INVALID_ARGUMENT naming `page_token`
//! while jobd's memory and Redis's stay within bounds and other callers are served; a forged
//! cursor that jobd accepts (it names a place in the queue's indexes) costs Redis no more than
//! an honest page of its size.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use futures::future::join_all;
use jobd_client::proto::{self, JobState};
use tonic::Code;

use crate::harness::*;

/// The queue every case lists.
const QUEUE: &str = "abused";

/// The page size of every listing.
const PAGE: u32 = 10;

/// Jobs submitted in one batch: they share their ready score, so that a cursor among them
/// makes jobd search among ties.
const TIED: usize = 1_000;

/// Entries of the queue's `completed` index whose jobs are gone (their retention passed, the
/// sweeper has not trimmed them yet): a page through them reads entries and lists nothing.
const EXPIRED: usize = 1_000;

/// Index entries a page may read per job it can hold (`SCANNED_PER_LISTED` in
/// src/store/list.rs): a page of `PAGE` jobs reads at most this many times `PAGE + 1` (it
/// reads one job ahead), and as many job hashes (one HMGET each).
const ENTRIES_PER_LISTED: u64 = 4;

/// Most index reads (ZRANGE) of one page: one per index walked (6 with no state), one per
/// round of refilling a page cut short by gone jobs (at most `ENTRIES_PER_LISTED`), and a
/// binary search among the cursor's ties (log2 of 1,000: 10).
const RANGES_PER_PAGE: u64 = 6 + ENTRIES_PER_LISTED + 10;

/// Forged and foreign tokens sent, over 10 connections at once, one call at a time on each.
const FORGERIES: usize = 2_000;

/// A token as jobd writes them: the listing it continues and the cursor, unsigned.
fn token(queue: &str, state: &str, page_size: u32, cursor: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{queue}\n{state}\n{page_size}\n{cursor}"))
}

/// The `n`th of the tokens jobd must refuse, with the listing it is sent to (queue, state,
/// page size): not base64, not text, not a cursor, a cursor out of range, and tokens of other
/// listings, the real `honest` token among them.
fn forgery(n: usize, honest: &str) -> (String, &'static str, JobState, u32) {
    let ours = |cursor: &str| token(QUEUE, "", PAGE, cursor);
    let forged = match n % 14 {
        0 => format!("garbage-{n}"),
        1 => "!!!not base64!!!".to_owned(),
        2 => URL_SAFE_NO_PAD.encode([0xff, 0xfe, b'\n', 0xfd]),
        3 => URL_SAFE_NO_PAD.encode(format!("no line breaks {n}")),
        4 => ours(&format!("{}", 6 + n)),
        5 => ours("0.inf.abused.x"),
        6 => ours("0.NaN.abused.x"),
        7 => ours("0.1e999.abused.x"),
        8 => ours("0.1."),
        9 => ours("-1"),
        10 => token("other", "", PAGE, "0"),
        11 => token(QUEUE, "queued", PAGE, "0"),
        12 => token(QUEUE, "", PAGE + 1, "0"),
        // One in ten near the size limit of ListJobs' request (64 KiB).
        _ if n % 10 == 3 => token("x".repeat(40_000).as_str(), "", PAGE, "0"),
        _ => ours(&format!("7.{n}.{QUEUE}.x")),
    };
    match n % 4 {
        // The honest token, sent to another queue, state or page size.
        0 if n.is_multiple_of(3) => (honest.to_owned(), "other", JobState::Unspecified, PAGE),
        0 if n % 3 == 1 => (honest.to_owned(), QUEUE, JobState::Queued, PAGE),
        0 => (honest.to_owned(), QUEUE, JobState::Unspecified, PAGE + 1),
        _ => (forged, QUEUE, JobState::Unspecified, PAGE),
    }
}

fn list_request(
    queue: &str,
    state: JobState,
    page_size: u32,
    token: String,
) -> proto::ListJobsRequest {
    proto::ListJobsRequest {
        queue: queue.to_owned(),
        state: state.into(),
        page_size,
        page_token: token,
    }
}

/// Submits `TIED` jobs in batches of 500, each batch's jobs sharing their ready score; their
/// ids in ready order within each batch.
async fn submit_tied(jobs: &mut Jobs) -> Vec<String> {
    let mut ids = Vec::with_capacity(TIED);
    for _ in 0..TIED / 500 {
        let batch = (0..500).map(|_| submit_request(QUEUE)).collect();
        ids.extend(submit_jobs(jobs, batch).await.into_iter().map(|job| job.id));
    }
    ids
}

/// Adds `EXPIRED` entries of gone jobs to the queue's `completed` index, their retention ending
/// in 2100 (the sweeper leaves them alone).
fn add_expired_entries(redis: &RedisServer) {
    let key = format!("jobd:{{{QUEUE}}}:done:completed");
    let mut args = vec!["ZADD".to_owned(), key];
    for i in 0..EXPIRED {
        args.push("4102444800000".to_owned());
        args.push(format!("{QUEUE}.01J{i:023}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(redis.cli(&args).trim(), EXPIRED.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_foreign_page_tokens_are_refused_and_memory_stays_bounded() {
    let redis = RedisServer::start().await;
    let jobd = Running::start(&redis.url(), &[]).await;
    let mut jobs = jobd.jobs().await;
    submit_tied(&mut jobs).await;
    add_expired_entries(&redis);
    let first = jobs
        .list_jobs(list_request(
            QUEUE,
            JobState::Unspecified,
            PAGE,
            String::new(),
        ))
        .await
        .expect("the first page")
        .into_inner();
    let honest = first.next_page_token;
    assert!(!honest.is_empty(), "a token to the second page");
    let mut bystander = Bystander::new(&jobd).await;
    let baseline = bystander.baseline().await;
    let footprint = Footprint::start(jobd.pid(), &redis);
    let busy = bystander.keep_going();

    // Each connection sends its share one call after another, as fast as jobd answers.
    let mut connections = Vec::with_capacity(10);
    for connection in 0..10 {
        let mut jobs = jobd.jobs().await;
        let honest = honest.clone();
        connections.push(tokio::spawn(async move {
            for n in (connection..FORGERIES).step_by(10) {
                let (token, queue, state, size) = forgery(n, &honest);
                let answer = jobs
                    .list_jobs(list_request(queue, state, size, token))
                    .await;
                let status = answer.expect_err("a forged or foreign token is refused");
                assert_eq!(
                    status.code(),
                    Code::InvalidArgument,
                    "token {n}: {status:?}"
                );
                let named = status.message().contains("page_token");
                assert!(named, "token {n}: {status:?}");
            }
        }));
    }
    for connection in join_all(connections).await {
        connection.expect("every token refused");
    }

    busy.assert_kept(&baseline).await;
    // Refusals hold nothing: 10 connections of calls, one at a time each; Redis stores nothing
    // for them.
    footprint.assert_peak_within(jobd_growth(0, 0, 0) + 10 * PER_CONNECTION, REDIS_SLACK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_forged_cursor_makes_a_page_cost_more_than_its_size() {
    let redis = RedisServer::start().await;
    let jobd = Running::start(&redis.url(), &[]).await;
    let mut jobs = jobd.jobs().await;
    let ids = submit_tied(&mut jobs).await;
    add_expired_entries(&redis);
    let score = redis.cli(&[
        "ZRANGE",
        &format!("jobd:{{{QUEUE}}}:ready"),
        "0",
        "0",
        "WITHSCORES",
    ]);
    let score = score.lines().nth(1).expect("the ready score").to_owned();
    let ours = |cursor: String| token(QUEUE, "", PAGE, &cursor);
    // Cursors jobd accepts, each aimed at a costly place: among the 1,000 ties, past an id no
    // longer there (a binary search); before the queue's first entry; past every entry of the
    // last index; and the `completed` index alone, full of gone jobs' entries.
    let cases = [
        (
            "among ties",
            ours(format!("0.{score}.{}0", ids[499])),
            JobState::Unspecified,
        ),
        (
            "before everything",
            ours("0.-1e300.a".to_owned()),
            JobState::Unspecified,
        ),
        (
            "past everything",
            ours(format!("5.1e300.{QUEUE}.z")),
            JobState::Unspecified,
        ),
        (
            "gone jobs",
            token(QUEUE, "completed", PAGE, "3"),
            JobState::Completed,
        ),
    ];
    redis.cli(&["CONFIG", "SET", "slowlog-log-slower-than", "50000"]);
    redis.cli(&["SLOWLOG", "RESET"]);
    for (case, token, state) in cases {
        let (ranges, hashes) = (redis.command_calls("zrange"), redis.command_calls("hmget"));
        let page = jobs
            .list_jobs(list_request(QUEUE, state, PAGE, token))
            .await
            .unwrap_or_else(|status| panic!("{case}: {status:?}"))
            .into_inner();
        let ranges = redis.command_calls("zrange") - ranges;
        let hashes = redis.command_calls("hmget") - hashes;
        eprintln!(
            "{case}: {} jobs listed, {ranges} ZRANGEs, {hashes} HMGETs",
            page.jobs.len()
        );
        assert!(page.jobs.len() <= PAGE as usize, "{case}");
        assert!(ranges <= RANGES_PER_PAGE, "{case}: {ranges} ZRANGEs");
        let most = ENTRIES_PER_LISTED * (u64::from(PAGE) + 1);
        assert!(hashes <= most, "{case}: {hashes} HMGETs");
        if case == "gone jobs" {
            // It read its whole share and listed nothing: it ends short, with a token.
            assert_eq!(hashes, most, "{case}");
            assert!(page.jobs.is_empty() && !page.next_page_token.is_empty());
        }
    }
    assert_eq!(
        redis.cli(&["SLOWLOG", "LEN"]).trim(),
        "0",
        "a Redis call over 50 ms"
    );
}
