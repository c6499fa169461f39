//! The standard gRPC health service. The empty service name "" is SERVING while the process is
//! alive and answering (liveness); `jobd.v1.JobService` and `jobd.v1.WorkerService` report
//! readiness as `background::readiness` decides it.

use tokio::sync::watch;
use tonic_health::{ServingStatus, server::HealthReporter};

use super::{
    JobApi, WorkerApi,
    proto::{job_service_server::JobServiceServer, worker_service_server::WorkerServiceServer},
};

/// Sets the readiness of jobd's services; only changes reach health watchers.
pub struct Readiness {
    reporter: HealthReporter,
    ready: Option<bool>,
}

impl Readiness {
    pub fn new(reporter: HealthReporter) -> Self {
        Self {
            reporter,
            ready: None,
        }
    }

    /// Reports what `ready` says, from now until its sender is gone.
    pub async fn follow(mut self, mut ready: watch::Receiver<bool>) {
        loop {
            let now = *ready.borrow_and_update();
            self.set(now).await;
            if ready.changed().await.is_err() {
                return;
            }
        }
    }

    pub async fn set(&mut self, ready: bool) {
        if self.ready == Some(ready) {
            return;
        }
        self.ready = Some(ready);
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        tracing::info!(ready, "readiness changed");
        for service in [
            <JobServiceServer<JobApi> as tonic::server::NamedService>::NAME,
            <WorkerServiceServer<WorkerApi> as tonic::server::NamedService>::NAME,
        ] {
            self.reporter.set_service_status(service, status).await;
        }
    }
}
