//! The WorkerService calls the runtime makes, each through [`Client::unary`] (its deadline and
//! retries from the service config), with the refusals it expects logged rather than raised.

use std::time::Duration;

use bytes::Bytes;

use crate::{
    Client, Result,
    client::CallOptions,
    proto::{self, ClaimedJob, Completion},
    spec::duration,
};

/// What a claim asks for: queues, worker id, lease, acknowledgement timeout.
#[derive(Debug, Clone)]
pub(crate) struct ClaimSpec {
    pub queues: Vec<String>,
    pub worker_id: String,
    pub lease: Duration,
    pub ack_timeout: Option<Duration>,
}

impl ClaimSpec {
    /// A ClaimJobs request for `max_jobs` jobs, waiting up to `wait` for the first.
    pub fn request(&self, max_jobs: usize, wait: Duration) -> proto::ClaimJobsRequest {
        proto::ClaimJobsRequest {
            claim: Some(proto::ClaimJobRequest {
                queues: self.queues.clone(),
                worker_id: self.worker_id.clone(),
                lease: Some(duration(self.lease)),
                wait: Some(duration(wait)),
                ack_timeout: self.ack_timeout.map(duration),
            }),
            max_jobs: max_jobs as u32,
        }
    }
}

impl Client {
    /// ClaimJobs, never retried nor cancelled: a claim is let run to its end (its `wait`), so
    /// no job is claimed for a caller that went away.
    pub(crate) async fn claim(&self, request: proto::ClaimJobsRequest) -> Result<Vec<ClaimedJob>> {
        let wait = request
            .claim
            .as_ref()
            .and_then(|c| c.wait)
            .map_or(0, |w| w.seconds.max(0) as u64);
        let options = CallOptions {
            retry: Some(false),
            timeout: Some(Duration::from_secs(wait + 30)),
            ..Default::default()
        };
        let response = self
            .unary("ClaimJobs", request, options, |r| {
                let mut stub = self.workers();
                async move { stub.claim_jobs(r).await }
            })
            .await?;
        Ok(response.jobs)
    }

    /// CompleteJobs, with `next` claiming jobs for the slots free; logs refused completions.
    pub(crate) async fn complete(
        &self,
        completions: Vec<Completion>,
        next: Option<proto::ClaimJobsRequest>,
    ) -> Result<Vec<ClaimedJob>> {
        let ids: Vec<String> = completions.iter().map(|c| c.job_id.clone()).collect();
        let request = proto::CompleteJobsRequest { completions, next };
        let response = self
            .unary("CompleteJobs", request, CallOptions::default(), |r| {
                let mut stub = self.workers();
                async move { stub.complete_jobs(r).await }
            })
            .await?;
        for (job_id, result) in ids.iter().zip(&response.results) {
            if result.code != 0 {
                tracing::warn!(%job_id, reason = %result.reason, message = %result.message,
                    "the job refused its result");
            }
        }
        Ok(response.next)
    }

    /// CompleteJob for one job.
    pub(crate) async fn complete_one(
        &self,
        job_id: &str,
        token: &str,
        result: Bytes,
    ) -> Result<()> {
        let request = proto::CompleteJobRequest {
            job_id: job_id.to_owned(),
            lease_token: token.to_owned(),
            result,
            next: None,
        };
        self.unary("CompleteJob", request, CallOptions::default(), |r| {
            let mut stub = self.workers();
            async move { stub.complete_job(r).await }
        })
        .await?;
        Ok(())
    }

    /// FailJob; a failure to report is logged.
    pub(crate) async fn fail(&self, job_id: &str, token: &str, error: String, retryable: bool) {
        let request = proto::FailJobRequest {
            job_id: job_id.to_owned(),
            lease_token: token.to_owned(),
            error,
            retryable: Some(retryable),
        };
        let outcome = self
            .unary("FailJob", request, CallOptions::default(), |r| {
                let mut stub = self.workers();
                async move { stub.fail_job(r).await }
            })
            .await;
        if let Err(error) = outcome {
            tracing::error!(%job_id, %error, "could not fail the job");
        }
    }

    /// ReleaseJob: the job goes back to its queue at no cost; a failure is logged (the ack
    /// deadline or the lease gives the job back then).
    pub(crate) async fn release(&self, job_id: &str, token: &str, reason: String) {
        let request = proto::ReleaseJobRequest {
            job_id: job_id.to_owned(),
            lease_token: token.to_owned(),
            reason,
        };
        let outcome = self
            .unary("ReleaseJob", request, CallOptions::default(), |r| {
                let mut stub = self.workers();
                async move { stub.release_job(r).await }
            })
            .await;
        if let Err(error) = outcome {
            tracing::error!(%job_id, %error, "could not give the job back");
        }
    }

    /// Heartbeat, with progress when given.
    pub(crate) async fn heartbeat(
        &self,
        request: proto::HeartbeatRequest,
        timeout: Duration,
    ) -> Result<proto::HeartbeatResponse> {
        let options = CallOptions {
            timeout: Some(timeout),
            ..Default::default()
        };
        self.unary("Heartbeat", request, options, |r| {
            let mut stub = self.workers();
            async move { stub.heartbeat(r).await }
        })
        .await
    }
}
