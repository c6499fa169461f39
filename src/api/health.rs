//! The standard gRPC health service. The empty service name "" is SERVING while the process is
//! alive and answering (liveness); `jobd.v1.JobService` and `jobd.v1.WorkerService` are SERVING
//! only while Redis answers, cannot evict jobs (see `keeps_jobs` in app.rs), and the server is
//! not draining (readiness).

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
