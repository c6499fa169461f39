//! Claims within the payload-bytes budget (issue 20): a claim reserves the room its reply may
//! take before it reads a job, and claims no job that does not fit, so that claims reading
//! large payloads at once never take the budget past its limit, and the jobs left behind are
//! untouched: still queued, no attempt, no event.

use std::time::Duration;

use futures::future::join_all;
use jobd_client::proto;
use tonic::Code;

use crate::harness::*;

const CLAIM_JOB: &str = "/jobd.v1.WorkerService/ClaimJob";

/// A claim of `queue` that waits up to `wait`, whose jobs need no acknowledgement for a minute:
/// they stay leased while their replies are held.
fn held_claim(queue: &str, wait: Duration) -> proto::ClaimJobRequest {
    proto::ClaimJobRequest {
        ack_timeout: Some(pb_duration(Duration::from_secs(60))),
        ..claim_request(queue, wait)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_of_large_jobs_take_no_more_than_the_budget() {
    const PAYLOAD: usize = 1_000_000;
    // Room for three jobs of 1 MB (each weighs its payload, its spec and 8 KiB), not four.
    const BUDGET: u64 = 3_500_000;
    const JOBS: usize = 12;
    let redis = RedisServer::start().await;
    // Twelve claims meet Redis at once: more time than the harness's second.
    let settings = Settings {
        command_timeout: "10s",
        extra: vec![format!("--max-payload-bytes-in-flight={BUDGET}")],
        ..Settings::default()
    };
    let jobd = TestServer::start_with(&redis.url(), settings).await;
    let address = jobd.addr.to_string();
    let (mut jobs, mut workers) = jobd.clients().await;
    let mut ids = Vec::new();
    for _ in 0..JOBS {
        ids.push(submit(&mut jobs, "big", &vec![b'p'; PAYLOAD]).await.id);
    }
    submit(&mut jobs, "small", b"small").await;
    let small = claim(&mut workers, "small").await;

    // Twelve claims at once, none of whose replies can be sent: each served one holds its
    // job's payload in the budget. Three fit; the others are refused before claiming.
    let claims = (0..JOBS).map(|_| {
        let request = held_claim("big", Duration::ZERO);
        let address = &address;
        async move { stalled_call(address, CLAIM_JOB, &request).await }
    });
    let held = join_all(claims).await;
    let refused: Vec<_> = held.iter().filter_map(Stalled::refused).collect();
    assert_eq!(
        refused,
        vec!["8"; JOBS - 3],
        "RESOURCE_EXHAUSTED for all but three"
    );
    let counts = stats(&mut jobs, "big").await;
    assert_eq!((counts.running, counts.queued), (3, JOBS as u64 - 3));
    // Those refused left the jobs as they were: never claimed.
    let untouched: Vec<&String> = ids.iter().filter(|id| redis.never_claimed(id)).collect();
    assert_eq!(untouched.len(), JOBS - 3);

    // A completion's `next` finds no room either: the completion is recorded, `next` is
    // empty, and the jobs stay as they were.
    let completed = workers
        .complete_job(proto::CompleteJobRequest {
            job_id: small.job.as_ref().unwrap().id.clone(),
            lease_token: small.lease_token.clone(),
            result: Default::default(),
            next: Some(proto::ClaimJobsRequest {
                claim: Some(held_claim("big", Duration::ZERO)),
                max_jobs: 4,
            }),
        })
        .await
        .expect("the completion is recorded")
        .into_inner();
    assert!(completed.next.is_empty());
    // A claim waiting on an empty queue gets no job handed off by a submission through this
    // jobd when the job does not fit in the room left (500,000 bytes): its payload does, its
    // size does not. The job is queued, and the claim, looking at it, is refused.
    let waiting = waiting_claim(&jobd, held_claim("late", Duration::from_secs(30))).await;
    let late = submit(&mut jobs, "late", &vec![b'p'; 495_000]).await;
    let refused = waiting.await.unwrap();
    assert_reason(refused, Code::ResourceExhausted, "BUDGET_EXHAUSTED");
    assert!(redis.never_claimed(&late.id));
    assert!(untouched.iter().all(|id| redis.never_claimed(id)));

    // Once the held replies are gone, the budget has room again: the jobs left are claimed,
    // each at its first attempt, as many at a time as fit in one reply.
    drop(held);
    let mut claimed = Vec::new();
    while claimed.len() < untouched.len() {
        let more = eventually(Duration::from_secs(10), "room in the budget", || {
            let mut workers = workers.clone();
            async move {
                let request = proto::ClaimJobsRequest {
                    claim: Some(held_claim("big", Duration::ZERO)),
                    max_jobs: 100,
                };
                workers.claim_jobs(request).await.ok()
            }
        })
        .await
        .into_inner()
        .jobs;
        assert!((1..=3).contains(&more.len()), "{} jobs", more.len());
        claimed.extend(more);
    }
    for job in claimed.iter().map(|claimed| claimed.job.as_ref().unwrap()) {
        assert!(untouched.contains(&&job.id));
        assert_eq!((job.attempt, job.payload.len()), (1, PAYLOAD));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_larger_than_the_budget_is_claimed_alone() {
    const BUDGET: u64 = 1_000_000;
    const HUGE: usize = 1_500_000;
    let redis = RedisServer::start().await;
    let max_payload = "--max-payload-bytes=2000000";
    // The job comes through a jobd whose budget takes its submission.
    let submitter = Running::start(&redis.url(), &[max_payload]).await;
    let mut jobs = submitter.jobs().await;
    let huge = submit(&mut jobs, "huge", &vec![b'h'; HUGE]).await;
    submit(&mut jobs, "small", b"small").await;
    let budget = format!("--max-payload-bytes-in-flight={BUDGET}");
    let jobd = Running::start(&redis.url(), &[&budget, max_payload]).await;
    let mut workers = jobd.workers().await;

    // While another reply holds a few bytes of the budget, the job is not claimed.
    let request = held_claim("small", Duration::ZERO);
    let held = stalled_call(jobd.address(), CLAIM_JOB, &request).await;
    assert_eq!(held.refused(), None, "the small job's reply is on its way");
    let refused = workers.claim_job(held_claim("huge", Duration::ZERO)).await;
    let metadata = assert_reason(refused, Code::ResourceExhausted, "BUDGET_EXHAUSTED");
    assert_eq!(metadata["budget"], "max-payload-bytes-in-flight");
    assert!(redis.never_claimed(&huge.id));

    // With nothing else held, it goes out whole, alone.
    drop(held);
    let claimed = eventually(Duration::from_secs(10), "the budget to be free", || {
        let mut workers = workers.clone();
        async move {
            let request = held_claim("huge", Duration::ZERO);
            workers.claim_job(request).await.ok()
        }
    })
    .await
    .into_inner();
    let job = claimed.job.unwrap();
    assert_eq!((job.id, job.attempt), (huge.id, 1));
    assert_eq!(job.payload.len(), HUGE);
}
