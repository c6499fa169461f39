//! `jobd.v1.JobService`: submit, inspect, cancel and watch jobs.

use std::collections::HashMap;

use tonic::{Code, Request, Response, Status};

use super::{
    auth::Access,
    convert::{Listing, job_state, page_size},
    observe::current_trace_context,
    proto::{self, job_service_server::JobService},
    reason::{self, Reason},
    replies::{self, Held},
    services::Shared,
    streams::{self, EventStream, FollowStream, Holding},
};
use crate::{
    budgets::Permit,
    domain::{
        Job, JobId, JobState, NewJob, QueueName, RequestError, SubmitRequest, UnixMillis,
        check_text,
    },
    events::Follower,
    queues::AdmissionError,
    submissions::Submitted,
};

const MAX_CANCEL_REASON: usize = 256;
const MAX_BATCH: usize = 1000;

pub struct JobApi(Shared);

/// A SubmitJobs request's jobs with their ids, its caller, and their payloads' permit.
type NewJobs = (Vec<(JobId, NewJob)>, Access, Permit);

impl JobApi {
    pub fn new(services: Shared) -> Self {
        Self(services)
    }

    /// Checks a SubmitJobs request and gives each job its id: every job is valid, and in a
    /// queue the caller may use, or the status names the first that is not (`jobs[i]`).
    /// Their payloads are counted in the payload-bytes budget while the permit is held.
    fn new_jobs(&self, request: Request<proto::SubmitJobsRequest>) -> Result<NewJobs, Status> {
        let access = Access::of(&request)?;
        let now = UnixMillis::now();
        let trace_context = current_trace_context(request.metadata().as_ref());
        let requests = request.into_inner().jobs;
        if requests.is_empty() || requests.len() > MAX_BATCH {
            let reason = format!("must hold 1 to {MAX_BATCH} jobs");
            return Err(RequestError::invalid("jobs", reason).into());
        }
        let mut jobs = Vec::with_capacity(requests.len());
        for (index, request) in requests.into_iter().enumerate() {
            let within = |error: RequestError| error.within(&format!("jobs[{index}]"));
            let mut submission = SubmitRequest::try_from(request).map_err(within)?;
            submission.trace_context = trace_context.clone();
            let job = NewJob::new(submission, &self.0.limits.submit, now).map_err(within)?;
            jobs.push((self.0.submissions.new_job_id(&job.queue), job));
        }
        let queues = jobs.iter().enumerate();
        access.check_all(queues.map(|(i, (_, job))| (format!("jobs[{i}].queue"), &job.queue)))?;
        let bytes = jobs.iter().map(|(_, job)| job.payload.len() as u64).sum();
        let held = self.payload_bytes(&access, bytes)?;
        Ok((jobs, access, held))
    }

    /// Counts `bytes` of payload in the budget while the permit is held.
    fn payload_bytes(&self, access: &Access, bytes: u64) -> Result<Permit, Status> {
        Ok(self
            .0
            .budgets
            .payload_bytes
            .take(access.principal(), bytes)?)
    }

    /// What a stream of `access`'s caller holds while it is open, with the `Held` its
    /// response carries: RESOURCE_EXHAUSTED when the watch-stream budget is used up.
    fn stream_holding(&self, access: &Access) -> Result<(Holding, Held), Status> {
        let stream = self.0.budgets.watch_streams.take(access.principal(), 1)?;
        let sending = Held::default();
        let results = self.0.budgets.stream_result_bytes.clone();
        let holding = Holding::new(
            self.0.metrics.watch_stream(),
            stream,
            results,
            sending.clone(),
        );
        Ok((holding, sending))
    }

    /// Counts the queues of a submission among its caller's, refused with
    /// RESOURCE_EXHAUSTED, before anything is written, when they would take it past its cap.
    async fn admit(&self, access: &Access, queues: &[&QueueName]) -> Result<(), Status> {
        let Some((principal, cap)) = access
            .caller()
            .queue_cap(self.0.limits.max_queues_per_principal)
        else {
            return Ok(());
        };
        let mut distinct: Vec<&QueueName> = queues.to_vec();
        distinct.sort();
        distinct.dedup();
        self.0
            .admission
            .admit(principal, cap, &distinct)
            .await
            .map_err(|error| match error {
                AdmissionError::OverCap { cap } => {
                    let message = format!(
                        "{principal} has {cap} queues with jobs already, its cap (max_queues in \
                         the auth file, else --max-queues-per-principal): submit to one of them, \
                         or wait until a queue without jobs is forgotten"
                    );
                    let metadata = [
                        ("budget", "max-queues-per-principal".to_owned()),
                        ("limit", cap.to_string()),
                    ];
                    reason::status(
                        Code::ResourceExhausted,
                        Reason::BudgetExhausted,
                        message,
                        &metadata,
                    )
                }
                AdmissionError::Store(error) => error.into(),
            })
    }

    /// The answer for one submitted job; a new one is counted, and a scheduled one wakes the
    /// sweeper. The job comes without what the caller sent (payload, labels) and without a
    /// result: a reply that echoed them could exceed what a client accepts (4 MiB for every
    /// stock gRPC client) after the jobs were created, and its retry would create them again.
    /// An existing job an idempotency key named is read once per call (`read`), without its
    /// payload and result, however many of the call's jobs name it.
    async fn submitted(
        &self,
        submitted: Submitted,
        read: &mut HashMap<JobId, Job>,
    ) -> Result<proto::SubmitJobResponse, Status> {
        let (mut job, created) = match submitted {
            Submitted::Created(job) => {
                tracing::debug!(job = %job.id, "job submitted");
                self.0.metrics.submitted(job.queue(), job.kind.as_str());
                if job.run_at.is_some() {
                    self.0.sweeper.wake(job.queue());
                }
                (*job, true)
            }
            Submitted::Existing(id) => match read.get(&id) {
                Some(job) => (job.clone(), false),
                None => {
                    let job = self.0.store.summary(&id).await?;
                    read.insert(id, job.clone());
                    (job, false)
                }
            },
        };
        job.payload = Default::default();
        job.labels = Default::default();
        job.result = None;
        Ok(proto::SubmitJobResponse {
            job: Some(job.into()),
            created,
        })
    }

    fn follower(&self) -> Follower {
        Follower::new(
            self.0.store.clone(),
            self.0.hub.clone(),
            self.0.metrics.clone(),
            self.0.shutdown.clone(),
        )
    }
}

#[tonic::async_trait]
impl JobService for JobApi {
    async fn submit_job(
        &self,
        request: Request<proto::SubmitJobRequest>,
    ) -> Result<Response<proto::SubmitJobResponse>, Status> {
        let access = Access::of(&request)?;
        let now = UnixMillis::now();
        let trace_context = current_trace_context(request.metadata().as_ref());
        let mut submission: SubmitRequest = request.into_inner().try_into()?;
        submission.trace_context = trace_context;
        let new = NewJob::new(submission, &self.0.limits.submit, now)?;
        access.check("queue", &new.queue)?;
        self.admit(&access, &[&new.queue]).await?;
        let _held = self.payload_bytes(&access, new.payload.len() as u64)?;
        let submitted = self.0.submissions.submit(new).await?;
        let response = self.submitted(submitted, &mut HashMap::new()).await?;
        Ok(Response::new(response))
    }

    async fn submit_jobs(
        &self,
        request: Request<proto::SubmitJobsRequest>,
    ) -> Result<Response<proto::SubmitJobsResponse>, Status> {
        let (jobs, access, _held) = self.new_jobs(request)?;
        let queues: Vec<&QueueName> = jobs.iter().map(|(_, job)| &job.queue).collect();
        self.admit(&access, &queues).await?;
        let (mut results, mut read) = (Vec::with_capacity(jobs.len()), HashMap::new());
        for submitted in self.0.submissions.submit_many(jobs).await? {
            results.push(self.submitted(submitted, &mut read).await?);
        }
        Ok(Response::new(proto::SubmitJobsResponse { results }))
    }

    type SubmitAndWatchJobsStream = FollowStream;

    async fn submit_and_watch_jobs(
        &self,
        request: Request<proto::SubmitJobsRequest>,
    ) -> Result<Response<Self::SubmitAndWatchJobsStream>, Status> {
        let (jobs, access, held) = self.new_jobs(request)?;
        let queues: Vec<&QueueName> = jobs.iter().map(|(_, job)| &job.queue).collect();
        self.admit(&access, &queues).await?;
        let (holding, sending) = self.stream_holding(&access)?;
        // Registered before the jobs are written, so that no event can go unannounced.
        let watches = jobs
            .iter()
            .map(|(id, _)| self.0.hub.watch_job(id, access.principal()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut follower = self.follower();
        let (mut results, mut read) = (Vec::with_capacity(jobs.len()), HashMap::new());
        let submitted = self.0.submissions.submit_many(jobs).await?;
        for (submitted, watch) in submitted.into_iter().zip(watches) {
            match &submitted {
                Submitted::Created(job) => follower.created(watch, job.first_event()),
                // An idempotency key named an earlier job: follow that one, once.
                Submitted::Existing(id) if !follower.contains(id) => {
                    let watch = self.0.hub.watch_job(id, access.principal())?;
                    follower.existing(watch, id.clone(), 0).await?;
                }
                Submitted::Existing(_) => {}
            }
            results.push(self.submitted(submitted, &mut read).await?);
        }
        drop(held);
        let first = proto::SubmitJobsResponse { results };
        let stream = streams::follow(follower, first, holding);
        Ok(sending.attach(Response::new(stream)))
    }

    async fn get_job(
        &self,
        request: Request<proto::GetJobRequest>,
    ) -> Result<Response<proto::GetJobResponse>, Status> {
        let id = JobId::parse("job_id", &request.get_ref().job_id)?;
        let access = Access::of(&request)?;
        access.check("job_id", id.queue())?;
        // Counted before the payload and result are read; a result written meanwhile is
        // counted after, and refused in the same way past the budget.
        let budget = &self.0.budgets.payload_bytes;
        let sizes = self.0.store.payload_sizes(&id).await?;
        let mut held = replies::take(budget, &access, sizes)?;
        let job = self.0.store.get(&id).await?;
        let read = (job.payload.len() + job.result.as_ref().map_or(0, |r| r.len())) as u64;
        if read > sizes {
            drop(held);
            held = replies::take(budget, &access, read)?;
        }
        let response = Response::new(proto::GetJobResponse {
            job: Some(job.into()),
        });
        Ok(held.attach(response))
    }

    async fn cancel_job(
        &self,
        request: Request<proto::CancelJobRequest>,
    ) -> Result<Response<proto::CancelJobResponse>, Status> {
        let access = Access::of(&request)?;
        let request = request.into_inner();
        let id = JobId::parse("job_id", &request.job_id)?;
        access.check("job_id", id.queue())?;
        check_text("reason", &request.reason, MAX_CANCEL_REASON)?;
        let (job, cancelled_now) = self.0.store.cancel(&id, &request.reason).await?;
        if cancelled_now {
            self.0
                .metrics
                .finished(job.queue(), job.kind.as_str(), JobState::Cancelled);
        }
        Ok(Response::new(proto::CancelJobResponse {
            job: Some(job.into()),
        }))
    }

    async fn get_queue_stats(
        &self,
        request: Request<proto::GetQueueStatsRequest>,
    ) -> Result<Response<proto::QueueStats>, Status> {
        let queue = QueueName::parse("queue", &request.get_ref().queue)?;
        Access::of(&request)?.check("queue", &queue)?;
        let stats = self.0.store.stats(&queue).await?;
        Ok(Response::new(proto::QueueStats {
            queue: queue.to_string(),
            queued: stats.queued,
            scheduled: stats.scheduled,
            running: stats.running,
            completed: stats.completed,
            failed: stats.failed,
            cancelled: stats.cancelled,
        }))
    }

    async fn list_jobs(
        &self,
        request: Request<proto::ListJobsRequest>,
    ) -> Result<Response<proto::ListJobsResponse>, Status> {
        let access = Access::of(&request)?;
        let request = request.into_inner();
        let queue = QueueName::parse("queue", &request.queue)?;
        access.check("queue", &queue)?;
        let state = job_state("state", request.state)?;
        let page_size = page_size("page_size", request.page_size)?;
        let listing = Listing {
            queue: &queue,
            state,
            page_size,
        };
        let cursor = listing.cursor("page_token", &request.page_token)?;
        let (jobs, next) = self.0.store.list(&queue, state, cursor, page_size).await?;
        Ok(Response::new(proto::ListJobsResponse {
            jobs: jobs.into_iter().map(Into::into).collect(),
            next_page_token: next
                .map(|next| listing.page_token(next))
                .unwrap_or_default(),
        }))
    }

    type WatchJobStream = EventStream;

    async fn watch_job(
        &self,
        request: Request<proto::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let access = Access::of(&request)?;
        let request = request.into_inner();
        let id = JobId::parse("job_id", &request.job_id)?;
        access.check("job_id", id.queue())?;
        let after = request.after_sequence;
        let (holding, sending) = self.stream_holding(&access)?;
        // Registered, then read, here: an unknown job is NOT_FOUND, a sequence past its last
        // OUT_OF_RANGE, before any stream starts.
        let mut follower = self.follower();
        follower
            .existing(self.0.hub.watch_job(&id, access.principal())?, id, after)
            .await?;
        let stream = streams::watch(follower, after, holding);
        Ok(sending.attach(Response::new(stream)))
    }
}
