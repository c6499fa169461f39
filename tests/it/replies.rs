//! Replies a stock gRPC client can take: every one stays under the 4 MiB receive limit that
//! gRPC libraries ship with, so that no call acts in Redis and then fails in the client (jobs
//! created twice on retry, jobs leased to a reply nobody received).

use std::time::Duration;

use jobd_client::proto::{self, JobState};

use crate::harness::*;

const MIB: usize = 1024 * 1024;

/// Five jobs of `queue` with payloads of 1 MiB, the default limit: 5 MiB sent in one call.
fn five_big_jobs_request(queue: &str) -> proto::SubmitJobsRequest {
    proto::SubmitJobsRequest {
        jobs: (0..5u8)
            .map(|i| proto::SubmitJobRequest {
                payload: vec![i; MIB].into(),
                ..submit_request(queue)
            })
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_submissions_and_claims_fit_a_default_client() {
    let redis = RedisServer::start().await;
    let server = TestServer::start(&redis).await;
    // tonic's clients, like every stock gRPC client, take replies of 4 MiB at most.
    let (mut jobs, mut workers) = server.clients().await;

    // Submissions do not echo the payloads (nor labels): GetJob has them.
    let submitted = jobs
        .submit_jobs(five_big_jobs_request("big"))
        .await
        .expect("the reply fits")
        .into_inner()
        .results;
    assert_eq!(submitted.len(), 5);
    for (i, result) in submitted.iter().enumerate() {
        let job = result.job.as_ref().unwrap();
        assert!(result.created && job.payload.is_empty());
        assert_eq!(get(&mut jobs, &job.id).await.payload, vec![i as u8; MIB]);
    }
    let mut stream = jobs
        .submit_and_watch_jobs(five_big_jobs_request("big"))
        .await
        .expect("the stream opens")
        .into_inner();
    let first = stream
        .message()
        .await
        .expect("the first message fits")
        .unwrap();
    let Some(proto::submit_and_watch_jobs_response::Message::Submitted(results)) = first.message
    else {
        panic!("the submission results come first");
    };
    assert!(
        results
            .results
            .iter()
            .all(|r| r.job.as_ref().unwrap().payload.is_empty())
    );
    drop(stream);

    // Ten jobs of 1 MiB wait: a claim of 5 gets as many as fit in one reply (3), the rest stay
    // queued for the next claim; nothing is leased to a reply that could not be delivered.
    let claim = proto::ClaimJobRequest {
        ack_timeout: Some(pb_duration(Duration::from_secs(60))),
        ..claim_request("big", Duration::ZERO)
    };
    let first = claim_jobs(&mut workers, claim.clone(), 5).await;
    assert_eq!(first.len(), 3);
    assert!(
        first
            .iter()
            .all(|claimed| claimed.job.as_ref().unwrap().payload.len() == MIB)
    );
    let counts = stats(&mut jobs, "big").await;
    assert_eq!((counts.running, counts.queued), (3, 7));

    // A completion's `next` claim is bounded the same way.
    let next = workers
        .complete_job(proto::CompleteJobRequest {
            job_id: first[0].job.as_ref().unwrap().id.clone(),
            lease_token: first[0].lease_token.clone(),
            result: Default::default(),
            next: Some(proto::ClaimJobsRequest {
                claim: Some(claim.clone()),
                max_jobs: 5,
            }),
        })
        .await
        .expect("the reply fits")
        .into_inner()
        .next;
    assert_eq!(next.len(), 3);
    let counts = stats(&mut jobs, "big").await;
    assert_eq!((counts.running, counts.queued), (5, 4));

    // However many are asked for.
    let rest = claim_jobs(&mut workers, claim.clone(), 100).await;
    assert_eq!(rest.len(), 3);
    assert_eq!(claim_jobs(&mut workers, claim, 100).await.len(), 1);
    let job = get(&mut jobs, &rest[0].job.as_ref().unwrap().id).await;
    assert_eq!(job.state(), JobState::Running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_larger_than_the_budget_comes_alone() {
    let redis = RedisServer::start().await;
    let settings = Settings {
        max_payload: Some(5 * MIB as u32),
        ..Settings::default()
    };
    let server = TestServer::start_with(&redis.url(), settings).await;
    let mut jobs = server.jobs().await;
    // A client that raised its limit, as one must to take payloads over 4 MiB.
    let mut workers = server
        .client()
        .await
        .workers()
        .max_decoding_message_size(8 * MIB);
    for payload in [vec![1; 4 * MIB + MIB / 2], vec![2; 10], vec![3; 10]] {
        jobs.submit_job(proto::SubmitJobRequest {
            payload: payload.into(),
            ..submit_request("huge")
        })
        .await
        .unwrap();
    }
    let claim = claim_request("huge", Duration::ZERO);
    let alone = claim_jobs(&mut workers, claim.clone(), 3).await;
    assert_eq!(alone.len(), 1);
    assert_eq!(
        alone[0].job.as_ref().unwrap().payload.len(),
        4 * MIB + MIB / 2
    );
    assert_eq!(claim_jobs(&mut workers, claim, 3).await.len(), 2);
}
