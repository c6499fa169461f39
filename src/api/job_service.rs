//! `jobd.v1.JobService`: submit, inspect, cancel and watch jobs.

use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::{
    convert::job_state,
    follow::{FollowStream, Followed},
    observe::current_trace_context,
    proto::{self, job_service_server::JobService},
    watch::{EventStream, Watcher},
};
use crate::{
    background::SweeperHandle,
    domain::{
        JobId, JobState, NewJob, QueueName, RequestError, SubmitLimits, SubmitRequest, UnixMillis,
        check_text,
    },
    events::EventHub,
    store::{JobStore, ListCursor, Submitted},
    telemetry::Metrics,
};

const MAX_CANCEL_REASON: usize = 256;
const MAX_BATCH: usize = 1000;
const DEFAULT_PAGE_SIZE: u32 = 50;
const MAX_PAGE_SIZE: u32 = 500;

pub struct JobApi {
    store: JobStore,
    hub: EventHub,
    metrics: Metrics,
    sweeper: SweeperHandle,
    limits: SubmitLimits,
    shutdown: CancellationToken,
}

impl JobApi {
    pub fn new(
        store: JobStore,
        hub: EventHub,
        metrics: Metrics,
        sweeper: SweeperHandle,
        limits: SubmitLimits,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            store,
            hub,
            metrics,
            sweeper,
            limits,
            shutdown,
        }
    }

    /// Checks a SubmitJobs request and gives each job its id: every job is valid, or the
    /// status names the first that is not (`jobs[i]`).
    fn new_jobs(
        &self,
        request: Request<proto::SubmitJobsRequest>,
    ) -> Result<Vec<(JobId, NewJob)>, Status> {
        let now = UnixMillis::now();
        let trace_context = current_trace_context(request.metadata().as_ref());
        let requests = request.into_inner().jobs;
        if requests.is_empty() || requests.len() > MAX_BATCH {
            return Err(
                RequestError::invalid("jobs", format!("must hold 1 to {MAX_BATCH} jobs")).into(),
            );
        }
        let mut jobs = Vec::with_capacity(requests.len());
        for (index, request) in requests.into_iter().enumerate() {
            let element = format!("jobs[{index}]");
            let mut submission =
                SubmitRequest::try_from(request).map_err(|e| e.within(&element))?;
            submission.trace_context = trace_context.clone();
            let job = NewJob::new(submission, &self.limits, now).map_err(|e| e.within(&element))?;
            jobs.push((self.store.new_job_id(&job.queue), job));
        }
        Ok(jobs)
    }

    /// The answer for one submitted job; a new one is counted, and a scheduled one wakes the
    /// sweeper. The job comes without what the caller sent (payload, labels) and without a
    /// result: a reply that echoed them could exceed what a client accepts (4 MiB for every
    /// stock gRPC client) after the jobs were created, and its retry would create them again.
    async fn submitted(&self, submitted: Submitted) -> Result<proto::SubmitJobResponse, Status> {
        let (mut job, created) = match submitted {
            Submitted::Created(job) => {
                tracing::debug!(job = %job.id, "job submitted");
                self.metrics.submitted(job.queue(), job.kind.as_str());
                if job.run_at.is_some() {
                    self.sweeper.wake(job.queue());
                }
                (*job, true)
            }
            Submitted::Existing(id) => (self.store.get(&id).await?, false),
        };
        job.payload = Default::default();
        job.labels = Default::default();
        job.result = None;
        Ok(proto::SubmitJobResponse {
            job: Some(job.into()),
            created,
        })
    }
}

#[tonic::async_trait]
impl JobService for JobApi {
    async fn submit_job(
        &self,
        request: Request<proto::SubmitJobRequest>,
    ) -> Result<Response<proto::SubmitJobResponse>, Status> {
        let now = UnixMillis::now();
        let trace_context = current_trace_context(request.metadata().as_ref());
        let mut submission: SubmitRequest = request.into_inner().try_into()?;
        submission.trace_context = trace_context;
        let new = NewJob::new(submission, &self.limits, now)?;
        let submitted = self.store.submit(new).await?;
        Ok(Response::new(self.submitted(submitted).await?))
    }

    async fn submit_jobs(
        &self,
        request: Request<proto::SubmitJobsRequest>,
    ) -> Result<Response<proto::SubmitJobsResponse>, Status> {
        let jobs = self.new_jobs(request)?;
        let mut results = Vec::with_capacity(jobs.len());
        for submitted in self.store.submit_many(jobs).await? {
            results.push(self.submitted(submitted).await?);
        }
        Ok(Response::new(proto::SubmitJobsResponse { results }))
    }

    type SubmitAndWatchJobsStream = FollowStream;

    async fn submit_and_watch_jobs(
        &self,
        request: Request<proto::SubmitJobsRequest>,
    ) -> Result<Response<Self::SubmitAndWatchJobsStream>, Status> {
        let jobs = self.new_jobs(request)?;
        // Registered before the jobs are written, so that no event can go unannounced.
        let mut watches: Vec<_> = jobs.iter().map(|(id, _)| self.hub.watch_job(id)).collect();
        let mut followed = Followed::new(
            self.store.clone(),
            self.metrics.clone(),
            self.shutdown.clone(),
        );
        let mut results = Vec::with_capacity(jobs.len());
        let submitted = self.store.submit_many(jobs).await?;
        for (submitted, watch) in submitted.into_iter().zip(watches.drain(..)) {
            match &submitted {
                Submitted::Created(job) => followed.created(watch, job.first_event()),
                // An idempotency key named an earlier job: follow that one, once.
                Submitted::Existing(id) if !followed.contains(id) => {
                    followed
                        .existing(self.hub.watch_job(id), id.clone())
                        .await?;
                }
                Submitted::Existing(_) => {}
            }
            results.push(self.submitted(submitted).await?);
        }
        Ok(Response::new(
            followed.into_stream(proto::SubmitJobsResponse { results }),
        ))
    }

    async fn get_job(
        &self,
        request: Request<proto::GetJobRequest>,
    ) -> Result<Response<proto::GetJobResponse>, Status> {
        let id = JobId::parse("job_id", &request.get_ref().job_id)?;
        let job = self.store.get(&id).await?;
        Ok(Response::new(proto::GetJobResponse {
            job: Some(job.into()),
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<proto::CancelJobRequest>,
    ) -> Result<Response<proto::CancelJobResponse>, Status> {
        let request = request.into_inner();
        let id = JobId::parse("job_id", &request.job_id)?;
        check_text("reason", &request.reason, MAX_CANCEL_REASON)?;
        let (job, cancelled_now) = self.store.cancel(&id, &request.reason).await?;
        if cancelled_now {
            self.metrics
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
        let stats = self.store.stats(&queue).await?;
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
        let request = request.into_inner();
        let queue = QueueName::parse("queue", &request.queue)?;
        let state = job_state("state", request.state)?;
        let page_size = match request.page_size {
            0 => DEFAULT_PAGE_SIZE,
            size @ 1..=MAX_PAGE_SIZE => size,
            _ => {
                return Err(RequestError::invalid(
                    "page_size",
                    format!("must be from 1 to {MAX_PAGE_SIZE}"),
                )
                .into());
            }
        };
        let cursor = match request.page_token.as_str() {
            "" => ListCursor::default(),
            token => ListCursor::decode(token).ok_or_else(|| {
                RequestError::invalid("page_token", "is not a token from ListJobs")
            })?,
        };
        let (jobs, next) = self
            .store
            .list(&queue, state, cursor, page_size as usize)
            .await?;
        Ok(Response::new(proto::ListJobsResponse {
            jobs: jobs.into_iter().map(Into::into).collect(),
            next_page_token: next.map(ListCursor::encode).unwrap_or_default(),
        }))
    }

    type WatchJobStream = EventStream;

    async fn watch_job(
        &self,
        request: Request<proto::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let request = request.into_inner();
        let id = JobId::parse("job_id", &request.job_id)?;
        // The first read happens here, so an unknown job is NOT_FOUND before any stream starts.
        let watcher = Watcher::start(
            self.store.clone(),
            &self.hub,
            id,
            request.after_sequence,
            self.shutdown.clone(),
        )
        .await?;
        Ok(Response::new(watcher.into_stream(self.metrics.clone())))
    }
}
