//! Calls of any path with a message of any bytes: what a buggy or hostile client sends, which
//! no generated client can; and calls whose reply the client never reads (`stalled_call`).

use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, BufMut, Bytes};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::Channel,
};

/// Makes the unary call `path` ("/jobd.v1.JobService/GetJob") with `message` as the request's
/// encoded message; the answer's message, undecoded.
pub async fn raw_call(channel: Channel, path: &str, message: Vec<u8>) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|error| Status::unavailable(error.to_string()))?;
    let path = http::uri::PathAndQuery::try_from(path).expect("a valid path");
    grpc.unary(tonic::Request::new(message), path, RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

/// A message whose field 1 holds `size` bytes of `x`: a valid encoding of every request's
/// first field that is a string or bytes.
pub fn message_of(size: usize) -> Vec<u8> {
    let mut message = vec![0x0a];
    let mut length = size as u64;
    while length >= 0x80 {
        message.push((length as u8 & 0x7f) | 0x80);
        length >>= 7;
    }
    message.push(length as u8);
    message.resize(message.len() + size, b'x');
    message
}

/// Messages as they are.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        Ok(Some(bytes.to_vec()))
    }
}

/// A call whose reply cannot be sent, and what keeps it so; dropped, the call ends.
pub struct Stalled {
    reply: http::Response<hyper::body::Incoming>,
    _send: hyper::client::conn::http2::SendRequest<OneFrame>,
    connection: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

impl Stalled {
    /// The gRPC status code of a call jobd refused (its answer's headers end it); `None` for
    /// one it answers with a message, which stays unsent.
    pub fn refused(&self) -> Option<&str> {
        let status = self.reply.headers().get("grpc-status")?;
        Some(status.to_str().expect("a status code"))
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// Makes the unary call `path` with `message` over an HTTP/2 connection of its own whose
/// streams' windows are 0, so that jobd may send the reply's headers, never its message, and
/// holds whatever it holds for the reply until the call is dropped. Returns once jobd answered
/// (the headers came).
pub async fn stalled_call(address: &str, path: &str, message: &impl prost::Message) -> Stalled {
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let (mut send, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(0)
        .handshake(TokioIo::new(tcp))
        .await
        .expect("an HTTP/2 connection");
    let connection = tokio::spawn(connection);
    let message = message.encode_to_vec();
    let mut frame = vec![0];
    frame.extend((message.len() as u32).to_be_bytes());
    frame.extend(message);
    let request = http::Request::post(format!("http://{address}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(OneFrame(Some(frame.into())))
        .unwrap();
    let reply = send.send_request(request).await.expect("jobd answers");
    assert_eq!(reply.headers()["content-type"], "application/grpc");
    Stalled {
        reply,
        _send: send,
        connection,
    }
}

/// A request body of one frame.
pub struct OneFrame(Option<Bytes>);

impl http_body::Body for OneFrame {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.take().map(|data| Ok(http_body::Frame::data(data))))
    }
}
