//! Request size limits per method, enforced before decoding: the gRPC length prefix of each
//! request message is read as the body arrives, and a message over its method's limit ends the
//! call with RESOURCE_EXHAUSTED naming the method and the limit, before its bytes are
//! buffered, decoded or acted on.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::Request;
use http_body::{Body, Frame};
use tonic::{Code, Status};
use tower::{Layer, Service};

use super::{
    methods::rpc_method,
    reason::{Reason, status},
};

/// The limit of the methods that carry no payload (GetJob, CancelJob, WatchJob, ListJobs,
/// GetQueueStats, ClaimJob(s), Heartbeat, ReleaseJob; health, reflection, unknown ones): far
/// above their largest valid request (16 queue names of 128 bytes, a 256-byte reason).
pub const SMALL_REQUEST: usize = 64 * 1024;

/// Room for the rest of a request beside a payload or result of the maximum size (labels,
/// options, a completion's `next` claim), so that an oversized payload reaches validation and
/// gets a status that names its field.
pub const REQUEST_OVERHEAD: usize = 64 * 1024;

/// The limit of SubmitJobs and SubmitAndWatchJobs, unless one job's limit is larger.
pub const BATCH_REQUEST: usize = 16 * 1024 * 1024;

/// The limit of FailJob: an error is kept cut to 4 KiB, and may come long (a stack trace).
pub const FAIL_REQUEST: usize = 256 * 1024;

/// The size limit of each method's request messages.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// SubmitJob, CompleteJob, CompleteJobs: the largest payload plus `REQUEST_OVERHEAD`.
    pub one_payload: usize,
    /// SubmitJobs, SubmitAndWatchJobs.
    pub batch: usize,
}

impl RequestLimits {
    pub fn new(max_payload: usize) -> Self {
        let one_payload = max_payload + REQUEST_OVERHEAD;
        Self {
            one_payload,
            batch: one_payload.max(BATCH_REQUEST),
        }
    }

    /// The limit of the method at `path`.
    pub fn of(&self, path: &str) -> usize {
        match path {
            "/jobd.v1.JobService/SubmitJob"
            | "/jobd.v1.WorkerService/CompleteJob"
            | "/jobd.v1.WorkerService/CompleteJobs" => self.one_payload,
            "/jobd.v1.JobService/SubmitJobs" | "/jobd.v1.JobService/SubmitAndWatchJobs" => {
                self.batch
            }
            "/jobd.v1.WorkerService/FailJob" => FAIL_REQUEST,
            _ => SMALL_REQUEST,
        }
    }

    /// The largest limit of any method: tonic's own decoding limit, which this layer's always
    /// come before.
    pub fn largest(&self) -> usize {
        self.batch.max(FAIL_REQUEST)
    }
}

/// The tower layer that bounds the request messages of the server it wraps.
#[derive(Clone)]
pub struct SizeLayer {
    limits: RequestLimits,
}

impl SizeLayer {
    pub fn new(limits: RequestLimits) -> Self {
        Self { limits }
    }
}

impl<S> Layer<S> for SizeLayer {
    type Service = Size<S>;

    fn layer(&self, inner: S) -> Size<S> {
        Size {
            inner,
            limits: self.limits,
        }
    }
}

#[derive(Clone)]
pub struct Size<S> {
    inner: S,
    limits: RequestLimits,
}

impl<S> Service<Request<tonic::body::Body>> for Size<S>
where
    S: Service<Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        let path = request.uri().path();
        let limit = self.limits.of(path);
        let method = rpc_method(path);
        self.inner.call(request.map(|body| {
            tonic::body::Body::new(LimitedBody {
                inner: body,
                scan: Scan::default(),
                limit,
                method,
                failed: false,
            })
        }))
    }
}

pin_project_lite::pin_project! {
    /// A request body that fails at the first message over `limit`, as soon as its length
    /// prefix arrives.
    struct LimitedBody<B> {
        #[pin]
        inner: B,
        scan: Scan,
        limit: usize,
        method: &'static str,
        failed: bool,
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.project();
        if *this.failed {
            return Poll::Ready(None);
        }
        let frame = match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(error))) => {
                return Poll::Ready(Some(Err(Status::from_error(error.into()))));
            }
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref()
            && let Some(size) = this.scan.oversized(data, *this.limit)
        {
            *this.failed = true;
            return Poll::Ready(Some(Err(too_large(this.method, *this.limit, size))));
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// RESOURCE_EXHAUSTED for a request message of `size` bytes to `method`.
fn too_large(method: &str, limit: usize, size: u64) -> Status {
    let message = format!(
        "the request message is {size} bytes, over the limit of {limit} bytes for {method}"
    );
    let metadata = [("method", method.to_owned()), ("limit", limit.to_string())];
    status(
        Code::ResourceExhausted,
        Reason::MessageTooLarge,
        message,
        &metadata,
    )
}

/// Where the request body stands in gRPC's framing: each message is a 5-byte prefix (a
/// compression flag, then the length, big-endian) followed by that many bytes.
#[derive(Default)]
struct Scan {
    prefix: [u8; 5],
    /// Bytes of the prefix seen so far.
    filled: usize,
    /// Bytes of the current message still to come.
    remaining: u64,
}

impl Scan {
    /// The length of the first message over `limit` whose prefix is in `data`.
    fn oversized(&mut self, mut data: &[u8], limit: usize) -> Option<u64> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let skipped = data
                    .len()
                    .min(self.remaining.try_into().unwrap_or(usize::MAX));
                self.remaining -= skipped as u64;
                data = &data[skipped..];
                continue;
            }
            let taken = data.len().min(self.prefix.len() - self.filled);
            self.prefix[self.filled..self.filled + taken].copy_from_slice(&data[..taken]);
            self.filled += taken;
            data = &data[taken..];
            if self.filled == self.prefix.len() {
                self.filled = 0;
                let length = u32::from_be_bytes([
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ]);
                if length as usize > limit {
                    return Some(length.into());
                }
                self.remaining = length.into();
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(length: u32) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend(length.to_be_bytes());
        bytes.resize(5 + length as usize, 7);
        bytes
    }

    #[test]
    fn prefixes_are_read_across_chunks() {
        let mut body = message(10);
        body.extend(message(3));
        body.extend(&message(100)[..5]);
        // Every split into chunks finds the third message, and only it.
        for chunk in 1..body.len() {
            let mut scan = Scan::default();
            let found: Vec<u64> = body
                .chunks(chunk)
                .filter_map(|chunk| scan.oversized(chunk, 50))
                .collect();
            assert_eq!(found, [100], "chunks of {chunk}");
        }
    }

    #[test]
    fn messages_at_the_limit_pass() {
        let mut scan = Scan::default();
        assert_eq!(scan.oversized(&message(50), 50), None);
        assert_eq!(scan.oversized(&message(51)[..5], 50), Some(51));
    }

    #[test]
    fn each_method_has_its_limit() {
        let limits = RequestLimits::new(1024 * 1024);
        assert_eq!(limits.of("/jobd.v1.JobService/GetJob"), SMALL_REQUEST);
        assert_eq!(
            limits.of("/jobd.v1.JobService/SubmitJob"),
            1024 * 1024 + REQUEST_OVERHEAD
        );
        assert_eq!(limits.of("/jobd.v1.JobService/SubmitJobs"), BATCH_REQUEST);
        assert_eq!(limits.of("/x/y"), SMALL_REQUEST);
        assert_eq!(limits.largest(), BATCH_REQUEST);
    }
}
