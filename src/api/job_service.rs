//! `jobd.v1.JobService`: submit, inspect, cancel and watch jobs.

use tokio_stream::wrappers::ReceiverStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{Request, Response, Status};

use super::{
    proto::{self, job_service_server::JobService},
    watch::Watcher,
};
use crate::{
    domain::{JobId, NewJob, UnixMillis, check_text},
    events::EventHub,
    store::JobStore,
};

const MAX_CANCEL_REASON: usize = 256;

pub struct JobApi {
    store: JobStore,
    hub: EventHub,
    max_payload: usize,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl JobApi {
    pub fn new(
        store: JobStore,
        hub: EventHub,
        max_payload: usize,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            store,
            hub,
            max_payload,
            tracker,
            shutdown,
        }
    }
}

#[tonic::async_trait]
impl JobService for JobApi {
    async fn submit_job(
        &self,
        request: Request<proto::SubmitJobRequest>,
    ) -> Result<Response<proto::SubmitJobResponse>, Status> {
        let request = request.into_inner();
        let new = NewJob::new(
            &request.queue,
            &request.kind,
            request.payload,
            request.labels.into_iter().collect(),
            self.max_payload,
        )?;
        let job = self.store.submit(new, UnixMillis::now()).await?;
        Ok(Response::new(proto::SubmitJobResponse {
            job: Some(job.into()),
        }))
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
        let job = self
            .store
            .cancel(&id, &request.reason, UnixMillis::now())
            .await?;
        Ok(Response::new(proto::CancelJobResponse {
            job: Some(job.into()),
        }))
    }

    type WatchJobStream = ReceiverStream<Result<proto::JobEvent, Status>>;

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
        let (sender, receiver) = tokio::sync::mpsc::channel(super::watch::STREAM_BUFFER);
        self.tracker.spawn(watcher.run(sender));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}
