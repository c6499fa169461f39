//! [`Client`]: one HTTP/2 connection to jobd, the submitter's calls, and the unary calls the
//! worker makes, each with its deadline and retries from the service config.

use std::{collections::HashMap, future::Future, path::PathBuf, sync::Arc, time::Duration};

use tonic::{
    Request, Response, Status,
    metadata::{AsciiMetadataValue, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use crate::{
    Error, Result, RetryPolicy,
    error::Rejection,
    proto::{
        self, Job, job_service_client::JobServiceClient, worker_service_client::WorkerServiceClient,
    },
    service_config::{MethodConfig, methods},
    spec::JobSpec,
    trace,
};

/// The transport of the generated stubs: the connection, with the bearer token on every call.
pub type Transport = InterceptedService<Channel, Authorization>;

/// A connection to jobd. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    transport: Transport,
    methods: HashMap<String, MethodConfig>,
    retry: RetryPolicy,
    resume: RetryPolicy,
    watch_resume: Duration,
    retry_submissions: bool,
}

/// How to reach jobd: [`Client::builder`]`(endpoint)`, then the perimeter's settings (see
/// docs/security.md), then [`connect`](ClientBuilder::connect).
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    endpoint: String,
    token: Option<String>,
    ca_file: Option<PathBuf>,
    identity: Option<(PathBuf, PathBuf)>,
    domain: Option<String>,
    keep_alive: Option<Duration>,
    retry: RetryPolicy,
    resume: RetryPolicy,
    watch_resume: Duration,
    retry_submissions: bool,
}

/// Adds `authorization: Bearer <token>` to every call, when there is a token.
#[derive(Clone)]
pub struct Authorization(Option<AsciiMetadataValue>);

impl Interceptor for Authorization {
    fn call(&mut self, mut request: Request<()>) -> std::result::Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

impl ClientBuilder {
    /// Sends `authorization: Bearer <token>` on every call (a token of `jobd token new`).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Speaks TLS, trusting this CA (PEM) for jobd's certificate.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Presents this client certificate and key (PEM) to jobd: mTLS. Needs `ca_file`.
    pub fn client_certificate(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.identity = Some((cert.into(), key.into()));
        self
    }

    /// The name checked in jobd's certificate, when not the endpoint's host.
    pub fn domain_name(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    /// HTTP/2 keepalive: a PING every `interval` while calls are open, the connection given up
    /// when one is not answered within 10 s; `None`: no PINGs. Default: every 30 s.
    pub fn keep_alive(mut self, interval: Option<Duration>) -> Self {
        self.keep_alive = interval;
        self
    }

    /// The retries on UNAVAILABLE of calls safe to repeat; the service config's by default.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The backoff of resumed `watch` and `submit_and_wait` streams, and the attempts of a
    /// `submit_and_wait` submission sent again ([`RetryPolicy::RESUME`]).
    pub fn resume(mut self, policy: RetryPolicy) -> Self {
        self.resume = policy;
        self
    }

    /// How long `watch` (and `submit_and_wait`) keeps resuming a broken stream while every
    /// attempt fails (jobd restarting, say). Default 60 s. A stream that had stayed open for
    /// the resume policy's longest delay (`max`) before it broke starts the count afresh; one
    /// that jobd ended with OK on an unfinished job does not.
    pub fn watch_resume(mut self, budget: Duration) -> Self {
        self.watch_resume = budget;
        self
    }

    /// `false`: submissions get no generated idempotency key and are not retried (default
    /// `true`: a submission without a key gets `jobd-rs:<ulid>` and is retried).
    pub fn retry_submissions(mut self, retry: bool) -> Self {
        self.retry_submissions = retry;
        self
    }

    /// Connects. An endpoint without a scheme (`127.0.0.1:50051`) gets `https://` with a CA
    /// file, else `http://`.
    pub async fn connect(self) -> Result<Client> {
        let endpoint = self.endpoint()?;
        let channel = endpoint.connect().await.map_err(|e| {
            Error::Rpc(Box::new(Rejection::from_status(&Status::unavailable(
                format!("cannot connect to {}: {e}", self.endpoint),
            ))))
        })?;
        let authorization = match &self.token {
            Some(token) => {
                let mut value: AsciiMetadataValue =
                    MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
                        Error::Config("the token is not a valid header value".into())
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        Ok(Client {
            inner: Arc::new(Inner {
                transport: InterceptedService::new(channel, Authorization(authorization)),
                methods: methods(),
                retry: self.retry,
                resume: self.resume,
                watch_resume: self.watch_resume,
                retry_submissions: self.retry_submissions,
            }),
        })
    }

    fn endpoint(&self) -> Result<Endpoint> {
        let tls = self.ca_file.is_some();
        let url = if self.endpoint.contains("://") {
            self.endpoint.clone()
        } else {
            format!("{}://{}", if tls { "https" } else { "http" }, self.endpoint)
        };
        let mut endpoint = Endpoint::from_shared(url)
            .map_err(|e| Error::Config(format!("endpoint {:?}: {e}", self.endpoint)))?
            .tcp_nodelay(true);
        if let Some(interval) = self.keep_alive {
            endpoint = endpoint
                .http2_keep_alive_interval(interval)
                .keep_alive_timeout(Duration::from_secs(10));
        }
        if let Some(ca) = &self.ca_file {
            let read = |path: &PathBuf| {
                std::fs::read(path).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
            };
            let mut config =
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
            if let Some((cert, key)) = &self.identity {
                config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            if let Some(domain) = &self.domain {
                config = config.domain_name(domain);
            }
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| Error::Config(format!("TLS: {e}")))?;
        } else if self.identity.is_some() {
            return Err(Error::Config("a client certificate needs a CA file".into()));
        }
        Ok(endpoint)
    }
}

/// How one unary call is made: retried or not, its deadline, extra headers.
#[derive(Default)]
pub(crate) struct CallOptions {
    /// `None`: as the service config says of the method.
    pub retry: Option<bool>,
    /// `None`: the service config's deadline for the method.
    pub timeout: Option<Duration>,
    /// Extra metadata (`traceparent`).
    pub headers: Vec<(&'static str, String)>,
}

impl Client {
    /// Connects to jobd at `endpoint` (`http://127.0.0.1:50051`) without credentials.
    pub async fn connect(endpoint: impl Into<String>) -> Result<Client> {
        Self::builder(endpoint).connect().await
    }

    /// A connection to configure: token, CA file, client certificate, retries.
    pub fn builder(endpoint: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            endpoint: endpoint.into(),
            token: None,
            ca_file: None,
            identity: None,
            domain: None,
            keep_alive: Some(Duration::from_secs(30)),
            retry: RetryPolicy::default(),
            resume: RetryPolicy::RESUME,
            watch_resume: Duration::from_secs(60),
            retry_submissions: true,
        }
    }

    /// The generated JobService stub on this connection (token included), for calls this
    /// library does not wrap (`ListJobs`, `GetQueueStats`).
    pub fn jobs(&self) -> JobServiceClient<Transport> {
        JobServiceClient::new(self.inner.transport.clone())
    }

    /// The generated WorkerService stub on this connection (token included).
    pub fn workers(&self) -> WorkerServiceClient<Transport> {
        WorkerServiceClient::new(self.inner.transport.clone())
    }

    /// Submits one job; returns it (without payload), with its id.
    pub async fn submit(&self, spec: JobSpec) -> Result<Job> {
        let queue = spec.queue().to_owned();
        let request = spec.into_request(self.inner.retry_submissions);
        let span = trace::SubmitSpan::start("jobd.SubmitJob", &queue);
        let options = CallOptions {
            retry: Some(!request.idempotency_key.is_empty()),
            headers: span.headers(),
            ..Default::default()
        };
        let response = self
            .unary("SubmitJob", request, options, |r| {
                let mut stub = self.jobs();
                async move { stub.submit_job(r).await }
            })
            .await;
        span.end(response.as_ref().err());
        Ok(response?.job.unwrap_or_default())
    }

    /// Submits up to 1000 jobs in one call; returns them in the same order.
    pub async fn submit_many(&self, specs: impl IntoIterator<Item = JobSpec>) -> Result<Vec<Job>> {
        let jobs: Vec<_> = specs
            .into_iter()
            .map(|s| s.into_request(self.inner.retry_submissions))
            .collect();
        let queue = jobs.first().map(|j| j.queue.clone()).unwrap_or_default();
        let span = trace::SubmitSpan::start("jobd.SubmitJobs", &queue);
        let options = CallOptions {
            retry: Some(jobs.iter().all(|j| !j.idempotency_key.is_empty())),
            headers: span.headers(),
            ..Default::default()
        };
        let request = proto::SubmitJobsRequest { jobs };
        let response = self
            .unary("SubmitJobs", request, options, |r| {
                let mut stub = self.jobs();
                async move { stub.submit_jobs(r).await }
            })
            .await;
        span.end(response.as_ref().err());
        Ok(response?
            .results
            .into_iter()
            .map(|r| r.job.unwrap_or_default())
            .collect())
    }

    /// The job, with its payload and result; `JOB_NOT_FOUND` when unknown or past retention.
    pub async fn get(&self, job_id: &str) -> Result<Job> {
        let request = proto::GetJobRequest {
            job_id: job_id.to_owned(),
        };
        let response = self
            .unary("GetJob", request, CallOptions::default(), |r| {
                let mut stub = self.jobs();
                async move { stub.get_job(r).await }
            })
            .await?;
        Ok(response.job.unwrap_or_default())
    }

    /// Cancels a queued or running job; its handler hears of it at its next heartbeat.
    pub async fn cancel(&self, job_id: &str, reason: &str) -> Result<Job> {
        let request = proto::CancelJobRequest {
            job_id: job_id.to_owned(),
            reason: reason.to_owned(),
        };
        let response = self
            .unary("CancelJob", request, CallOptions::default(), |r| {
                let mut stub = self.jobs();
                async move { stub.cancel_job(r).await }
            })
            .await?;
        Ok(response.job.unwrap_or_default())
    }

    /// The policy broken streams are resumed with.
    pub(crate) fn resume_policy(&self) -> RetryPolicy {
        self.inner.resume
    }

    /// How long a watch resumes while every attempt fails.
    pub(crate) fn watch_resume_budget(&self) -> Duration {
        self.inner.watch_resume
    }

    /// Whether submissions get generated idempotency keys and retries.
    pub(crate) fn retries_submissions(&self) -> bool {
        self.inner.retry_submissions
    }

    /// One unary call of `method`: its deadline and retries on UNAVAILABLE per `options`, else
    /// per the service config; typed errors.
    pub(crate) async fn unary<Req, Resp, F, Fut>(
        &self,
        method: &'static str,
        message: Req,
        options: CallOptions,
        mut call: F,
    ) -> Result<Resp>
    where
        Req: Clone,
        F: FnMut(Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<Response<Resp>, Status>>,
    {
        let config = self.inner.methods.get(method).copied().unwrap_or_default();
        let policy = match options.retry {
            Some(false) => RetryPolicy::NONE,
            Some(true) => self.inner.retry,
            None if config.retry.is_some() => self.inner.retry,
            None => RetryPolicy::NONE,
        };
        let timeout = options.timeout.or(config.timeout);
        let mut attempt = 0;
        loop {
            let mut request = Request::new(message.clone());
            if let Some(timeout) = timeout {
                request.set_timeout(timeout);
            }
            for (key, value) in &options.headers {
                if let Ok(value) = value.parse() {
                    request.metadata_mut().insert(*key, value);
                }
            }
            let error = match call(request).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => Error::from(status),
            };
            attempt += 1;
            if !error.is_unavailable() || attempt >= policy.max_attempts {
                return Err(error);
            }
            let delay = policy.delay(attempt - 1);
            tracing::info!(method, ?delay, %error, "retrying after UNAVAILABLE");
            tokio::time::sleep(delay).await;
        }
    }
}
