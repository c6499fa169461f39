//! `jobd.v1.WorkerService`: claim jobs, keep leases alive, report outcomes.

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::{
    convert::{duration, state, timestamp},
    proto::{self, worker_service_server::WorkerService},
};
use crate::{
    background::SweeperHandle,
    domain::{
        AttemptEnd, ClaimRequest, Claimed, FailOutcome, HeartbeatOutcome, JobId, JobState,
        LeaseLimits, LeaseToken, Progress, Refusal, RequestError, check_size, check_text,
        stored_error,
    },
    events::{EventHub, QueueWaiter, Wakeup},
    store::{ClaimedJobs, Completed, JobStore, StoreError},
    telemetry::Metrics,
};

const MAX_CLAIM_JOBS: u32 = 100;
const MAX_RELEASE_REASON: usize = 256;
const DEFAULT_RELEASE_REASON: &str = "given back by its worker";

pub struct WorkerApi {
    store: JobStore,
    hub: EventHub,
    metrics: Metrics,
    sweeper: SweeperHandle,
    limits: LeaseLimits,
    max_payload: usize,
    shutdown: CancellationToken,
}

impl WorkerApi {
    pub fn new(
        store: JobStore,
        hub: EventHub,
        metrics: Metrics,
        sweeper: SweeperHandle,
        limits: LeaseLimits,
        max_payload: usize,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            store,
            hub,
            metrics,
            sweeper,
            limits,
            max_payload,
            shutdown,
        }
    }

    /// Records a job that a worker finished for good.
    fn record_end(&self, id: &JobId, ended: &AttemptEnd, outcome: JobState) {
        self.metrics
            .finished(id.queue(), ended.kind.as_str(), outcome);
        if let Some(run_time) = ended.run_time() {
            self.metrics.run_time(id.queue(), outcome, run_time);
        }
    }

    /// The status for a store error on a call about job `id`. A claim whose deadline passed
    /// wakes the sweeper for its queue, so that the job goes back (or its attempt ends) at
    /// once rather than at the sweeper's next visit.
    fn refused(&self, id: &JobId, error: StoreError) -> Status {
        if matches!(error, StoreError::Refused(Refusal::DeadlinePassed { .. })) {
            self.sweeper.wake(id.queue());
        }
        error.into()
    }

    /// Claims up to `max` jobs, trying each queue in the caller's order of preference.
    /// An error drops what earlier queues gave, which puts it back (see `store::release`).
    async fn try_claim(&self, claim: &ClaimRequest, max: usize) -> Result<ClaimedJobs, Status> {
        let mut claimed = ClaimedJobs::default();
        for queue in &claim.queues {
            let want = max - claimed.len();
            claimed.append(
                self.store
                    .claim(queue, &claim.worker, claim.lease, want, claim.ack_timeout)
                    .await?,
            );
            if claimed.len() >= max {
                break;
            }
        }
        Ok(claimed)
    }

    /// Claims up to `max` jobs, waiting up to the claim's wait for the first; none once the
    /// wait is over or the server shuts down.
    async fn claim(&self, claim: &ClaimRequest, max: usize) -> Result<ClaimedJobs, Status> {
        self.claim_next(claim, max, self.waiting(claim), false)
            .await
    }

    /// Registers a claim that waits on the in-process hub, armed from now on: a job announced
    /// after this wakes it. None for a claim that does not wait. A waiting claim holds no
    /// Redis connection; the hub wakes one waiter per announced job.
    fn waiting(&self, claim: &ClaimRequest) -> Option<Waiting> {
        (!claim.wait.is_zero()).then(|| {
            let mut waiter = self.hub.wait_for_queues(&claim.queues);
            Waiting {
                armed: Some(waiter.arm()),
                waiter,
            }
        })
    }

    /// The jobs a completion's `next` claims: none when the claim fails (Redis full or away),
    /// since the completion is recorded and its answer must say so, or the worker would be
    /// left to guess; its next claim meets the error itself.
    async fn claim_after_completion(
        &self,
        claim: &ClaimRequest,
        max: usize,
        waiting: Option<Waiting>,
        seen_empty: bool,
    ) -> ClaimedJobs {
        match self.claim_next(claim, max, waiting, seen_empty).await {
            Ok(claimed) => claimed,
            Err(status) => {
                tracing::warn!(
                    code = ?status.code(),
                    message = status.message(),
                    "completion recorded; the next claim failed and claims nothing"
                );
                ClaimedJobs::default()
            }
        }
    }

    /// Claims as `claim` does, with `waiting` registered already. `seen_empty`: its queue
    /// was seen without ready jobs since then (by the completion the claim came with), so a
    /// waiting claim waits at once instead of reading the queue first.
    async fn claim_next(
        &self,
        claim: &ClaimRequest,
        max: usize,
        mut waiting: Option<Waiting>,
        mut seen_empty: bool,
    ) -> Result<ClaimedJobs, Status> {
        let deadline = Instant::now() + claim.wait;
        // Counted as waiting from its first park, once it found nothing: a `next` claim
        // registers before its completion, which is not waiting for jobs.
        let mut gauge = None;
        loop {
            let wakeup = waiting.as_mut().map(Waiting::arm);
            let claimed = match (std::mem::take(&mut seen_empty), &wakeup) {
                (true, Some(_)) => ClaimedJobs::default(),
                _ => self.try_claim(claim, max).await?,
            };
            if !claimed.is_empty() {
                return Ok(self.started(claimed));
            }
            let Some(wakeup) = wakeup else {
                return Ok(ClaimedJobs::default());
            };
            // Parked, a job submitted through this process comes straight to this claim; one
            // submitted elsewhere wakes it to look again.
            let mut parked = self.store.park(
                &claim.queues,
                &claim.worker,
                claim.lease,
                max,
                claim.ack_timeout,
            );
            gauge.get_or_insert_with(|| self.metrics.waiting_claim());
            let (handed, stop) = tokio::select! {
                handed = parked.handed() => (Some(handed), false),
                () = wakeup => (None, false),
                () = tokio::time::sleep_until(deadline) => (None, true),
                () = self.shutdown.cancelled() => (None, true),
            };
            // A submission may have taken this claim meanwhile: leaving gets what it hands over.
            let handed = match handed {
                Some(handed) => handed,
                None => parked.leave().await,
            };
            if !handed.is_empty() {
                return Ok(self.started(handed));
            }
            if stop {
                return Ok(ClaimedJobs::default());
            }
        }
    }

    /// Records how long the jobs just claimed for the first time waited, by Redis's clock,
    /// which recorded both times.
    fn started(&self, claimed: ClaimedJobs) -> ClaimedJobs {
        for first in claimed.iter().filter(|claimed| claimed.job.attempt == 1) {
            if let Some(started) = first.job.started_at {
                self.metrics
                    .queue_wait(first.job.queue(), started.since(first.job.created_at));
            }
        }
        claimed
    }

    fn claim_request(&self, request: proto::ClaimJobRequest) -> Result<ClaimRequest, Status> {
        let lease = duration("lease", request.lease)?
            .map(|lease| self.limits.check_lease("lease", lease))
            .transpose()?;
        let wait = self.limits.wait("wait", duration("wait", request.wait)?)?;
        let ack_timeout = self
            .limits
            .ack_timeout("ack_timeout", duration("ack_timeout", request.ack_timeout)?)?;
        Ok(ClaimRequest::new(
            &request.queues,
            &request.worker_id,
            lease,
            wait,
            ack_timeout,
        )?)
    }

    /// Validates a ClaimJobs request: the claim, and how many jobs it may take.
    fn claim_jobs_request(
        &self,
        request: proto::ClaimJobsRequest,
    ) -> Result<(ClaimRequest, usize), Status> {
        let claim = request
            .claim
            .ok_or_else(|| RequestError::invalid("claim", "is required"))?;
        let max = match request.max_jobs {
            0 => 1,
            max @ 1..=MAX_CLAIM_JOBS => max as usize,
            _ => {
                return Err(RequestError::invalid(
                    "max_jobs",
                    format!("must be from 1 to {MAX_CLAIM_JOBS}"),
                )
                .into());
            }
        };
        Ok((self.claim_request(claim)?, max))
    }
}

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    async fn claim_job(
        &self,
        request: Request<proto::ClaimJobRequest>,
    ) -> Result<Response<proto::ClaimJobResponse>, Status> {
        let claim = self.claim_request(request.into_inner())?;
        let claimed = self.claim(&claim, 1).await?.deliver().into_iter().next();
        Ok(Response::new(
            claimed.map(claimed_response).unwrap_or_default(),
        ))
    }

    async fn claim_jobs(
        &self,
        request: Request<proto::ClaimJobsRequest>,
    ) -> Result<Response<proto::ClaimJobsResponse>, Status> {
        let (claim, max) = self.claim_jobs_request(request.into_inner())?;
        let claimed = self.claim(&claim, max).await?.deliver();
        Ok(Response::new(proto::ClaimJobsResponse {
            jobs: claimed.into_iter().map(claimed_job).collect(),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<proto::HeartbeatRequest>,
    ) -> Result<Response<proto::HeartbeatResponse>, Status> {
        let request = request.into_inner();
        let id = JobId::parse("job_id", &request.job_id)?;
        let token = lease_token("lease_token", &request.lease_token)?;
        let lease = duration("lease", request.lease)?
            .map(|lease| self.limits.check_lease("lease", lease))
            .transpose()?;
        let progress = request
            .progress
            .map(|progress| Progress::new(progress.value, progress.message))
            .transpose()?;
        let outcome = self
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
        let request = request.into_inner();
        let id = JobId::parse("job_id", &request.job_id)?;
        let token = lease_token("lease_token", &request.lease_token)?;
        check_size("result", &request.result, self.max_payload)?;
        let next = request
            .next
            .map(|next| self.claim_jobs_request(next))
            .transpose()?;
        // Registered before the completion, which says whether the queue then had ready jobs.
        let waiting = next.as_ref().and_then(|(claim, _)| self.waiting(claim));
        let completed = self
            .store
            .complete(&id, &token, request.result)
            .await
            .map_err(|error| self.refused(&id, error))?;
        if let Some(ended) = &completed.ended {
            self.record_end(&id, ended, JobState::Completed);
        }
        let next = match next {
            Some((claim, max)) => {
                let seen_empty = seen_empty(&claim, [(&id, &completed)]);
                self.claim_after_completion(&claim, max, waiting, seen_empty)
                    .await
                    .deliver()
            }
            None => Vec::new(),
        };
        Ok(Response::new(proto::CompleteJobResponse {
            next: next.into_iter().map(claimed_job).collect(),
        }))
    }

    async fn complete_jobs(
        &self,
        request: Request<proto::CompleteJobsRequest>,
    ) -> Result<Response<proto::CompleteJobsResponse>, Status> {
        let request = request.into_inner();
        if request.completions.is_empty() || request.completions.len() > MAX_CLAIM_JOBS as usize {
            return Err(RequestError::invalid(
                "completions",
                format!("must hold 1 to {MAX_CLAIM_JOBS} completions"),
            )
            .into());
        }
        let mut completions = Vec::with_capacity(request.completions.len());
        for (index, completion) in request.completions.into_iter().enumerate() {
            let element = format!("completions[{index}]");
            let within = |error: RequestError| error.within(&element);
            let id = JobId::parse("job_id", &completion.job_id).map_err(within)?;
            // A token jobd never issued is refused for this completion alone, as the job would.
            let token =
                LeaseToken::parse("lease_token", &completion.lease_token).map_err(within)?;
            check_size("result", &completion.result, self.max_payload).map_err(within)?;
            completions.push((id, token, completion.result));
        }
        let next = request
            .next
            .map(|next| self.claim_jobs_request(next))
            .transpose()?;
        // Registered before the completions, which say whether their queues then had ready jobs.
        let waiting = next.as_ref().and_then(|(claim, _)| self.waiting(claim));
        // All at once: completions of one queue share a script call.
        let outcomes =
            futures::future::join_all(completions.iter().map(|(id, token, result)| async move {
                match token {
                    Ok(token) => self.store.complete(id, token, result.clone()).await,
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
                    recorded.push((id, completed));
                    proto::CompletionResult::default()
                }
                // The job's refusal is this completion's answer alone.
                Err(error @ (StoreError::NotFound | StoreError::Refused(_))) => {
                    let status = self.refused(id, error);
                    proto::CompletionResult {
                        code: status.code() as i32,
                        message: status.message().to_owned(),
                    }
                }
                // Redis trouble fails the call; every completion is safe to repeat.
                Err(error) => return Err(error.into()),
            };
            results.push(result);
        }
        let next = match next {
            Some((claim, max)) => {
                let seen_empty = seen_empty(&claim, recorded.iter().map(|(id, c)| (*id, c)));
                self.claim_after_completion(&claim, max, waiting, seen_empty)
                    .await
                    .deliver()
            }
            None => Vec::new(),
        };
        Ok(Response::new(proto::CompleteJobsResponse {
            results,
            next: next.into_iter().map(claimed_job).collect(),
        }))
    }

    async fn fail_job(
        &self,
        request: Request<proto::FailJobRequest>,
    ) -> Result<Response<proto::FailJobResponse>, Status> {
        let request = request.into_inner();
        let id = JobId::parse("job_id", &request.job_id)?;
        let token = lease_token("lease_token", &request.lease_token)?;
        if request.error.is_empty() {
            return Err(RequestError::invalid("error", "must not be empty").into());
        }
        // A long error is kept cut rather than refused: refusing it would leave the failure
        // unrecorded, the job waiting out its lease.
        let error = stored_error(&request.error);
        let retryable = request.retryable.unwrap_or(true);
        let (outcome, ended) = self
            .store
            .fail(&id, &token, &error, retryable)
            .await
            .map_err(|error| self.refused(&id, error))?;
        if let Some(ended) = ended {
            match outcome {
                FailOutcome::RetryAt(_) => {
                    self.metrics
                        .retried(id.queue(), ended.kind.as_str(), "failed");
                }
                FailOutcome::Failed => self.record_end(&id, &ended, JobState::Failed),
            }
        }
        Ok(Response::new(match outcome {
            FailOutcome::RetryAt(at) => {
                self.sweeper.wake(id.queue());
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
        let request = request.into_inner();
        let id = JobId::parse("job_id", &request.job_id)?;
        let token = lease_token("lease_token", &request.lease_token)?;
        check_text("reason", &request.reason, MAX_RELEASE_REASON)?;
        let reason = match request.reason.as_str() {
            "" => DEFAULT_RELEASE_REASON,
            reason => reason,
        };
        self.store
            .release_held(&id, &token, reason)
            .await
            .map_err(|error| self.refused(&id, error))?;
        self.metrics.released(id.queue(), 1);
        Ok(Response::new(proto::ReleaseJobResponse {}))
    }
}

/// A lease token as a caller presents it: INVALID_ARGUMENT when missing; one jobd never issued
/// is refused as any token that is not the job's current one (FAILED_PRECONDITION).
fn lease_token(field: &str, value: &str) -> Result<LeaseToken, Status> {
    Ok(LeaseToken::parse(field, value)??)
}

/// A claim that may wait: its registration on the hub, armed for its first look.
struct Waiting {
    waiter: QueueWaiter,
    armed: Option<Wakeup>,
}

impl Waiting {
    /// The wake-up armed at registration, the first time; a newly armed one after that.
    fn arm(&mut self) -> Wakeup {
        self.armed.take().unwrap_or_else(|| self.waiter.arm())
    }
}

/// Whether a completion recorded after `claim` registered saw the claim's queue without
/// ready jobs. Only for a claim on a single queue: with several, the first look must take
/// them in the worker's order of preference.
fn seen_empty<'a>(
    claim: &ClaimRequest,
    completed: impl IntoIterator<Item = (&'a JobId, &'a Completed)>,
) -> bool {
    let [queue] = claim.queues.as_slice() else {
        return false;
    };
    completed
        .into_iter()
        .any(|(id, completed)| id.queue() == queue && !completed.queue_has_ready)
}

fn claimed_job(claimed: Claimed) -> proto::ClaimedJob {
    proto::ClaimedJob {
        job: Some(claimed.job.into()),
        lease_token: claimed.token.to_string(),
        lease_expires_at: Some(timestamp(claimed.lease_expires_at)),
        ack_deadline: Some(timestamp(claimed.ack_deadline)),
    }
}

fn claimed_response(claimed: Claimed) -> proto::ClaimJobResponse {
    proto::ClaimJobResponse {
        job: Some(claimed.job.into()),
        lease_token: claimed.token.to_string(),
        lease_expires_at: Some(timestamp(claimed.lease_expires_at)),
        ack_deadline: Some(timestamp(claimed.ack_deadline)),
    }
}
