//! `jobd.v1.WorkerService`: claim jobs, keep leases alive, report outcomes.

use bytes::Bytes;
use tonic::{Request, Response, Status};

use super::{
    auth::Access,
    convert::{
        MAX_CLAIM_JOBS, claimed_job, claimed_response, duration, lease_token, max_jobs, state,
        timestamp,
    },
    proto::{self, worker_service_server::WorkerService},
    reason,
    replies::{self, Held},
    services::Shared,
};
use crate::{
    budgets::Permit,
    claims::Registration,
    completions::Completed,
    domain::{
        AttemptEnd, ClaimRequest, FailOutcome, HeartbeatOutcome, JobId, JobState, LeaseToken,
        Progress, Refusal, RequestError, check_size, check_text, stored_error,
    },
    store::StoreError,
};

const MAX_RELEASE_REASON: usize = 256;
const DEFAULT_RELEASE_REASON: &str = "given back by its worker";

pub struct WorkerApi(Shared);

/// A completion's `next` claim, registered before the completions are written: each says
/// whether its queue then had ready jobs.
struct Next {
    claim: ClaimRequest,
    max: usize,
    registration: Option<Registration>,
}

impl WorkerApi {
    pub fn new(services: Shared) -> Self {
        Self(services)
    }

    /// Counts `bytes` of results in the payload-bytes budget while the permit is held.
    fn payload_bytes(&self, access: &Access, bytes: u64) -> Result<Permit, Status> {
        Ok(self
            .0
            .budgets
            .payload_bytes
            .take(access.principal(), bytes)?)
    }

    /// Records a job that a worker finished for good.
    fn record_end(&self, id: &JobId, ended: &AttemptEnd, outcome: JobState) {
        let metrics = &self.0.metrics;
        metrics.finished(id.queue(), ended.kind.as_str(), outcome);
        if let Some(run_time) = ended.run_time() {
            metrics.run_time(id.queue(), outcome, run_time);
        }
    }

    /// The status for a store error on a call about job `id`. A claim whose deadline passed
    /// wakes the sweeper for its queue, so that the job goes back (or its attempt ends) at
    /// once rather than at the sweeper's next visit.
    fn refused(&self, id: &JobId, error: StoreError) -> Status {
        if matches!(error, StoreError::Refused(Refusal::DeadlinePassed { .. })) {
            self.0.sweeper.wake(id.queue());
        }
        error.into()
    }

    /// Validates a claim, whose queues must all be the caller's; `at` is where the request
    /// holds it (`claim.`, `next.claim.`).
    fn claim_request(
        &self,
        access: &Access,
        at: &str,
        request: proto::ClaimJobRequest,
    ) -> Result<ClaimRequest, Status> {
        let leases = &self.0.limits.leases;
        let lease = duration("lease", request.lease)?
            .map(|lease| leases.check_lease("lease", lease))
            .transpose()?;
        let wait = leases.wait("wait", duration("wait", request.wait)?)?;
        let ack =
            leases.ack_timeout("ack_timeout", duration("ack_timeout", request.ack_timeout)?)?;
        let claim = ClaimRequest::new(&request.queues, &request.worker_id, lease, wait, ack)?;
        let queues = claim.queues.iter();
        access.check_all(queues.map(|queue| (format!("{at}queues"), queue)))?;
        Ok(claim)
    }

    /// Validates a ClaimJobs request: the claim, and how many jobs it may take.
    fn claim_jobs_request(
        &self,
        access: &Access,
        at: &str,
        request: proto::ClaimJobsRequest,
    ) -> Result<(ClaimRequest, usize), Status> {
        let claim = request
            .claim
            .ok_or_else(|| RequestError::invalid("claim", "is required"))?;
        let max = max_jobs("max_jobs", request.max_jobs)?;
        let claim = self.claim_request(access, &format!("{at}claim."), claim)?;
        Ok((claim, max))
    }

    /// A completion's `next`, validated and registered with the hub before the completions.
    fn next(
        &self,
        access: &Access,
        request: Option<proto::ClaimJobsRequest>,
    ) -> Result<Option<Next>, Status> {
        let Some(request) = request else {
            return Ok(None);
        };
        let (claim, max) = self.claim_jobs_request(access, "next.", request)?;
        let registration = self.0.claims.register(&claim, access.principal())?;
        Ok(Some(Next {
            claim,
            max,
            registration,
        }))
    }

    /// The jobs a completion's `next` claims, after the completions `recorded`, each with
    /// whether its queue then had ready jobs, and their payloads' permit; none without room in
    /// the payload-bytes budget (see `replies`).
    async fn next_jobs(
        &self,
        access: &Access,
        next: Option<Next>,
        recorded: Vec<(&JobId, bool)>,
    ) -> (Vec<proto::ClaimedJob>, Held) {
        let Some(Next {
            claim,
            max,
            registration,
        }) = next
        else {
            return (Vec::new(), Held::default());
        };
        let claims = &self.0.claims;
        let principal = access.principal();
        let claimed = claims.after_completion(&claim, max, principal, registration, recorded);
        let (jobs, held) = replies::claimed(claimed.await);
        (jobs.into_iter().map(claimed_job).collect(), held)
    }

    /// Completes `completions`, all at once (those of one queue share a script call): each
    /// one's result, and those recorded. Redis trouble fails them all; every one is safe to
    /// repeat.
    async fn complete_all(
        &self,
        completions: &[(JobId, Result<LeaseToken, Refusal>, Bytes)],
    ) -> Result<(Vec<proto::CompletionResult>, Vec<(JobId, Completed)>), Status> {
        let outcomes =
            futures::future::join_all(completions.iter().map(|(id, token, result)| async move {
                match token {
                    Ok(token) => self.0.completions.complete(id, token, result.clone()).await,
                    Err(refusal) => Err(StoreError::Refused(refusal.clone())),
                }
            }))
            .await;
        let mut results = Vec::with_capacity(outcomes.len());
        let mut recorded = Vec::with_capacity(outcomes.len());
        for ((id, _, _), outcome) in completions.iter().zip(outcomes) {
            let result = match outcome {
                Ok(completed) => {
                    if let Some(ended) = &completed.ended {
                        self.record_end(id, ended, JobState::Completed);
                    }
                    recorded.push((id.clone(), completed));
                    proto::CompletionResult::default()
                }
                // The job's refusal is this completion's answer alone.
                Err(error @ (StoreError::NotFound | StoreError::Refused(_))) => {
                    let status = self.refused(id, error);
                    proto::CompletionResult {
                        code: status.code() as i32,
                        message: status.message().to_owned(),
                        reason: reason::of(&status).unwrap_or_default(),
                    }
                }
                Err(error) => return Err(error.into()),
            };
            results.push(result);
        }
        Ok((results, recorded))
    }
}

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    async fn claim_job(
        &self,
        request: Request<proto::ClaimJobRequest>,
    ) -> Result<Response<proto::ClaimJobResponse>, Status> {
        let access = Access::of(&request)?;
        let claim = self.claim_request(&access, "", request.into_inner())?;
        let registration = self.0.claims.register(&claim, access.principal())?;
        let principal = access.principal();
        let claimed = self.0.claims.claim(&claim, 1, principal, registration);
        let (claimed, held) = replies::claimed(claimed.await?);
        let response = claimed.into_iter().next().map(claimed_response);
        Ok(held.attach(Response::new(response.unwrap_or_default())))
    }

    async fn claim_jobs(
        &self,
        request: Request<proto::ClaimJobsRequest>,
    ) -> Result<Response<proto::ClaimJobsResponse>, Status> {
        let access = Access::of(&request)?;
        let (claim, max) = self.claim_jobs_request(&access, "", request.into_inner())?;
        let registration = self.0.claims.register(&claim, access.principal())?;
        let principal = access.principal();
        let claimed = self.0.claims.claim(&claim, max, principal, registration);
        let (claimed, held) = replies::claimed(claimed.await?);
        Ok(held.attach(Response::new(proto::ClaimJobsResponse {
            jobs: claimed.into_iter().map(claimed_job).collect(),
        })))
    }

    async fn heartbeat(
        &self,
        request: Request<proto::HeartbeatRequest>,
    ) -> Result<Response<proto::HeartbeatResponse>, Status> {
        let access = Access::of(&request)?;
        let request = request.into_inner();
        let id = JobId::parse("job_id", &request.job_id)?;
        access.check("job_id", id.queue())?;
        let token = lease_token("lease_token", &request.lease_token)?;
        let lease = duration("lease", request.lease)?
            .map(|lease| self.0.limits.leases.check_lease("lease", lease))
            .transpose()?;
        let progress = request
            .progress
            .map(|progress| Progress::new(progress.value, progress.message))
            .transpose()?;
        let outcome = self
            .0
            .store
            .heartbeat(&id, &token, lease, progress)
            .await
            .map_err(|error| self.refused(&id, error))?;
        Ok(Response::new(match outcome {
            HeartbeatOutcome::Extended(expires) => proto::HeartbeatResponse {
                lease_expires_at: Some(timestamp(expires)),
                cancelled: false,
            },
            HeartbeatOutcome::Cancelled => proto::HeartbeatResponse {
                lease_expires_at: None,
                cancelled: true,
            },
        }))
    }

    async fn complete_job(
        &self,
        request: Request<proto::CompleteJobRequest>,
    ) -> Result<Response<proto::CompleteJobResponse>, Status> {
        let access = Access::of(&request)?;
        let request = request.into_inner();
        let id = JobId::parse("job_id", &request.job_id)?;
        access.check("job_id", id.queue())?;
        let token = lease_token("lease_token", &request.lease_token)?;
        check_size("result", &request.result, self.0.limits.max_payload)?;
        let _held = self.payload_bytes(&access, request.result.len() as u64)?;
        let next = self.next(&access, request.next)?;
        let completed = self
            .0
            .completions
            .complete(&id, &token, request.result)
            .await
            .map_err(|error| self.refused(&id, error))?;
        if let Some(ended) = &completed.ended {
            self.record_end(&id, ended, JobState::Completed);
        }
        let recorded = vec![(&id, completed.queue_has_ready)];
        let (next, held) = self.next_jobs(&access, next, recorded).await;
        Ok(held.attach(Response::new(proto::CompleteJobResponse { next })))
    }

    async fn complete_jobs(
        &self,
        request: Request<proto::CompleteJobsRequest>,
    ) -> Result<Response<proto::CompleteJobsResponse>, Status> {
        let access = Access::of(&request)?;
        let request = request.into_inner();
        let count = request.completions.len();
        if count == 0 || count > MAX_CLAIM_JOBS as usize {
            let reason = format!("must hold 1 to {MAX_CLAIM_JOBS} completions");
            return Err(RequestError::invalid("completions", reason).into());
        }
        let mut completions = Vec::with_capacity(count);
        for (index, completion) in request.completions.into_iter().enumerate() {
            let within = |error: RequestError| error.within(&format!("completions[{index}]"));
            let id = JobId::parse("job_id", &completion.job_id).map_err(within)?;
            access.check(&format!("completions[{index}].job_id"), id.queue())?;
            // A token jobd never issued is refused for this completion alone, as the job would.
            let token =
                LeaseToken::parse("lease_token", &completion.lease_token).map_err(within)?;
            let max_payload = self.0.limits.max_payload;
            check_size("result", &completion.result, max_payload).map_err(within)?;
            completions.push((id, token, completion.result));
        }
        let bytes = completions.iter().map(|(_, _, result)| result.len() as u64);
        let _held = self.payload_bytes(&access, bytes.sum())?;
        let next = self.next(&access, request.next)?;
        let (results, recorded) = self.complete_all(&completions).await?;
        let recorded: Vec<(&JobId, bool)> = recorded
            .iter()
            .map(|(id, completed)| (id, completed.queue_has_ready))
            .collect();
        let (next, held) = self.next_jobs(&access, next, recorded).await;
        let response = Response::new(proto::CompleteJobsResponse { results, next });
        Ok(held.attach(response))
    }

    async fn fail_job(
        &self,
        request: Request<proto::FailJobRequest>,
    ) -> Result<Response<proto::FailJobResponse>, Status> {
        let access = Access::of(&request)?;
        let request = request.into_inner();
        let id = JobId::parse("job_id", &request.job_id)?;
        access.check("job_id", id.queue())?;
        let token = lease_token("lease_token", &request.lease_token)?;
        if request.error.is_empty() {
            return Err(RequestError::invalid("error", "must not be empty").into());
        }
        // A long error is kept cut rather than refused: refusing it would leave the failure
        // unrecorded, the job waiting out its lease.
        let error = stored_error(&request.error);
        let retryable = request.retryable.unwrap_or(true);
        let (outcome, ended) = self
            .0
            .store
            .fail(&id, &token, &error, retryable)
            .await
            .map_err(|error| self.refused(&id, error))?;
        if let Some(ended) = ended {
            match outcome {
                FailOutcome::RetryAt(_) => {
                    self.0
                        .metrics
                        .retried(id.queue(), ended.kind.as_str(), "failed")
                }
                FailOutcome::Failed => self.record_end(&id, &ended, JobState::Failed),
            }
        }
        Ok(Response::new(match outcome {
            FailOutcome::RetryAt(at) => {
                self.0.sweeper.wake(id.queue());
                proto::FailJobResponse {
                    state: state(JobState::Scheduled).into(),
                    retry_at: Some(timestamp(at)),
                }
            }
            FailOutcome::Failed => proto::FailJobResponse {
                state: state(JobState::Failed).into(),
                retry_at: None,
            },
        }))
    }

    async fn release_job(
        &self,
        request: Request<proto::ReleaseJobRequest>,
    ) -> Result<Response<proto::ReleaseJobResponse>, Status> {
        let access = Access::of(&request)?;
        let request = request.into_inner();
        let id = JobId::parse("job_id", &request.job_id)?;
        access.check("job_id", id.queue())?;
        let token = lease_token("lease_token", &request.lease_token)?;
        check_text("reason", &request.reason, MAX_RELEASE_REASON)?;
        let reason = match request.reason.as_str() {
            "" => DEFAULT_RELEASE_REASON,
            reason => reason,
        };
        let put_back = self
            .0
            .store
            .release_held(&id, &token, reason)
            .await
            .map_err(|error| self.refused(&id, error))?;
        if put_back {
            self.0.metrics.released(id.queue(), 1);
        }
        Ok(Response::new(proto::ReleaseJobResponse {}))
    }
}
