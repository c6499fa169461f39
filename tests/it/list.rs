//! ListJobs: a queue's jobs a page at a time, by state, each listed once, the last page's
//! token empty.

use jobd_client::proto::{self, JobState};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_jobs_pages_through_a_queue_by_state() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    let mut queued = Vec::new();
    for _ in 0..7 {
        queued.push(submit(&mut jobs, "l", b"payload").await.id);
    }
    let running = claim(&mut workers, "l").await;
    queued.retain(|id| *id != running.job.as_ref().unwrap().id);

    // Every job, three at a time.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = jobs
            .list_jobs(proto::ListJobsRequest {
                queue: "l".into(),
                state: 0,
                page_size: 3,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.jobs.len() <= 3);
        assert!(
            page.jobs.iter().all(|job| job.payload.is_empty()),
            "listed without payload"
        );
        seen.extend(
            page.jobs
                .into_iter()
                .map(|job| (job.state(), job.id))
                .map(|(s, id)| (id, s)),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut expected: Vec<(String, JobState)> = queued
        .iter()
        .map(|id| (id.clone(), JobState::Queued))
        .collect();
    expected.push((running.job.unwrap().id, JobState::Running));
    assert_eq!(seen, expected, "queued in claim order, then running");

    let only_running = jobs
        .list_jobs(proto::ListJobsRequest {
            queue: "l".into(),
            state: JobState::Running.into(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(only_running.jobs.len(), 1);
    for bad in [
        proto::ListJobsRequest {
            queue: "l".into(),
            page_size: 501,
            ..Default::default()
        },
        proto::ListJobsRequest {
            queue: "l".into(),
            page_token: "garbage".into(),
            ..Default::default()
        },
        proto::ListJobsRequest {
            queue: "l".into(),
            state: 99,
            ..Default::default()
        },
    ] {
        let status = jobs.list_jobs(bad).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_jobs_resumes_after_the_last_job_listed_however_the_queue_moved() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    // Eight jobs in one batch: one score in the ready set, ordered among themselves by id.
    let ids = submit_batch(&mut jobs, "moving", 8).await;
    let lister = jobs.clone();
    let queued_page = |token: String| {
        let mut jobs = lister.clone();
        async move {
            let page = jobs
                .list_jobs(proto::ListJobsRequest {
                    queue: "moving".into(),
                    state: JobState::Queued.into(),
                    page_size: 2,
                    page_token: token,
                })
                .await
                .unwrap()
                .into_inner();
            let listed: Vec<String> = page.jobs.into_iter().map(|job| job.id).collect();
            (listed, page.next_page_token)
        }
    };

    let (first, token) = queued_page(String::new()).await;
    assert_eq!(first, ids[..2]);
    // The two listed jobs leave the queue: the next page starts after them all the same,
    // where an offset of 2 would skip the third and fourth jobs.
    for _ in 0..2 {
        claim(&mut workers, "moving").await;
    }
    let (second, token) = queued_page(token).await;
    assert_eq!(second, ids[2..4]);
    // A job joins the queue after the listed ones: it comes in its turn, and nothing repeats.
    let late = submit(&mut jobs, "moving", b"").await;
    let mut rest = Vec::new();
    let mut token = token;
    while !token.is_empty() {
        let (page, next) = queued_page(token).await;
        rest.extend(page);
        token = next;
    }
    let mut expected = ids[4..].to_vec();
    expected.push(late.id);
    assert_eq!(rest, expected);
}

/// Lists `queue` (in `state`, or in every state when `None`) page by page until a page comes
/// with an empty token; returns each page's jobs as (id, state). Every page but the last is
/// full, and the last is not empty unless the first is: a token promises a job to follow.
async fn list_pages(
    jobs: &mut Jobs,
    queue: &str,
    state: Option<JobState>,
    page_size: u32,
) -> Vec<Vec<(String, JobState)>> {
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let page = jobs
            .list_jobs(proto::ListJobsRequest {
                queue: queue.into(),
                state: state.map_or(0, Into::into),
                page_size,
                page_token: token,
            })
            .await
            .expect("ListJobs succeeds")
            .into_inner();
        let listed: Vec<(String, JobState)> = page
            .jobs
            .into_iter()
            .map(|job| (job.state(), job.id))
            .map(|(state, id)| (id, state))
            .collect();
        assert!(
            listed.len() <= page_size as usize,
            "a page of {} jobs",
            listed.len()
        );
        let last = page.next_page_token.is_empty();
        if !last {
            assert_eq!(
                listed.len(),
                page_size as usize,
                "page {} has a token but is not full",
                pages.len() + 1
            );
        }
        assert!(
            pages.is_empty() || !listed.is_empty(),
            "page {} is empty: the token before it promised more",
            pages.len() + 1
        );
        pages.push(listed);
        if last {
            return pages;
        }
        assert!(pages.len() < 100, "the token never ends");
        token = page.next_page_token;
    }
}

fn page_lengths(pages: &[Vec<(String, JobState)>]) -> Vec<usize> {
    pages.iter().map(Vec::len).collect()
}

/// Submits `count` jobs to `queue` in one batch; their ids, in claim order.
async fn submit_batch(jobs: &mut Jobs, queue: &str, count: usize) -> Vec<String> {
    let requests = (0..count).map(|_| submit_request(queue)).collect();
    submit_jobs(jobs, requests)
        .await
        .into_iter()
        .map(|job| job.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_page_has_an_empty_token_even_when_it_is_full() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let (mut jobs, mut workers) = server.clients().await;
    let queued = |ids: &[String]| -> Vec<(String, JobState)> {
        ids.iter()
            .map(|id| (id.clone(), JobState::Queued))
            .collect()
    };

    // Exactly one page of jobs, in one state: one page, by state or across every state (the
    // other indexes are empty, and the token says so).
    let one = submit_batch(&mut jobs, "one", 3).await;
    for state in [Some(JobState::Queued), None] {
        let pages = list_pages(&mut jobs, "one", state, 3).await;
        assert_eq!(page_lengths(&pages), [3], "state {state:?}");
        assert_eq!(pages.concat(), queued(&one));
    }

    // Exactly two pages of jobs.
    let two = submit_batch(&mut jobs, "two", 6).await;
    for state in [Some(JobState::Queued), None] {
        let pages = list_pages(&mut jobs, "two", state, 3).await;
        assert_eq!(page_lengths(&pages), [3, 3], "state {state:?}");
        assert_eq!(pages.concat(), queued(&two));
    }

    // Across states: a page of queued jobs, then a page of running ones.
    let mixed = submit_batch(&mut jobs, "mixed", 6).await;
    let mut claims = Vec::new();
    for _ in 0..3 {
        claims.push(claim(&mut workers, "mixed").await);
    }
    let mut expected = queued(&mixed[3..]);
    expected.extend(mixed[..3].iter().map(|id| (id.clone(), JobState::Running)));
    let pages = list_pages(&mut jobs, "mixed", None, 3).await;
    assert_eq!(page_lengths(&pages), [3, 3]);
    assert_eq!(pages.concat(), expected);
    let running = list_pages(&mut jobs, "mixed", Some(JobState::Running), 3).await;
    assert_eq!(page_lengths(&running), [3]);
    // The second page ends in another index than it started in: running, then completed.
    complete(&mut workers, &claims[0], b"").await.unwrap();
    let mut expected = queued(&mixed[3..]);
    expected.extend(mixed[1..3].iter().map(|id| (id.clone(), JobState::Running)));
    expected.push((mixed[0].clone(), JobState::Completed));
    let pages = list_pages(&mut jobs, "mixed", None, 3).await;
    assert_eq!(page_lengths(&pages), [3, 3]);
    assert_eq!(pages.concat(), expected);
    // Two pages of six, where the first ends with the queued jobs and the second with every
    // index.
    let pages = list_pages(&mut jobs, "mixed", None, 2).await;
    assert_eq!(page_lengths(&pages), [2, 2, 2]);
    assert_eq!(pages.concat(), expected);

    // A page that ends where the only entries left are of a job whose retention passed (its
    // hash gone before the sweeper trimmed the index): nothing follows, so no token.
    let expiring = submit_batch(&mut jobs, "expiring", 4).await;
    let finished = claim(&mut workers, "expiring").await;
    complete(&mut workers, &finished, b"").await.unwrap();
    let ulid = expiring[0].rsplit_once('.').unwrap().1;
    assert_eq!(
        redis.cli(&["DEL", &format!("jobd:{{expiring}}:job:{ulid}")]),
        "1"
    );
    let pages = list_pages(&mut jobs, "expiring", None, 3).await;
    assert_eq!(page_lengths(&pages), [3]);
    assert_eq!(pages.concat(), queued(&expiring[1..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_token_continues_its_own_listing_only_at_a_bounded_cost() {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    let mut jobs = server.jobs().await;
    // One batch: the jobs share their ready score (same priority, same creation time).
    let ids = submit_batch(&mut jobs, "tied", 1000).await;
    let list = |queue: &str, state: JobState, page_size: u32, page_token: String| {
        let mut jobs = jobs.clone();
        let request = proto::ListJobsRequest {
            queue: queue.into(),
            state: state.into(),
            page_size,
            page_token,
        };
        async move { jobs.list_jobs(request).await.map(|page| page.into_inner()) }
    };
    let first = list("tied", JobState::Unspecified, 10, String::new())
        .await
        .unwrap();
    let token = first.next_page_token;
    assert!(!token.is_empty());

    // The token continues this listing: not another queue's, state's or page size's.
    for (queue, state, size) in [
        ("other", JobState::Unspecified, 10),
        ("tied", JobState::Queued, 10),
        ("tied", JobState::Unspecified, 11),
    ] {
        let refused = list(queue, state, size, token.clone()).await;
        assert_status(refused, tonic::Code::InvalidArgument, "another listing");
    }
    let second = list("tied", JobState::Unspecified, 10, token)
        .await
        .unwrap();
    let listed: Vec<String> = second.jobs.into_iter().map(|job| job.id).collect();
    assert_eq!(listed, ids[10..20]);

    // Forged cursors among 1,000 tied entries: one just past an id no longer listed, and one
    // past every id. Each page costs a bounded number of reads (a binary search among the
    // ties), not one per tied entry before the cursor.
    let score = redis.cli(&["ZRANGE", "jobd:{tied}:ready", "0", "0", "WITHSCORES"]);
    let score = score.lines().nth(1).unwrap().to_owned();
    let forged = |after: &str| URL_SAFE_NO_PAD.encode(format!("tied\n\n10\n0.{score}.{after}"));
    let cases = [
        (format!("{}0", ids[499]), ids[500..510].to_vec()),
        ("tied.ZZZZZZZZZZZZZZZZZZZZZZZZZZ".to_owned(), Vec::new()),
    ];
    for (after, expected) in cases {
        let reads = redis.command_calls("zrange");
        let page = list("tied", JobState::Unspecified, 10, forged(&after))
            .await
            .unwrap();
        let reads = redis.command_calls("zrange") - reads;
        assert!(reads <= 20, "{reads} ZRANGEs for one page");
        let listed: Vec<String> = page.jobs.into_iter().map(|job| job.id).collect();
        assert_eq!(listed, expected);
    }
}
