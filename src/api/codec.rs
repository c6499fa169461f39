//! The protobuf codec of every jobd service: prost, with smaller starting buffers than
//! tonic's 8 KiB.
//!
//! Each call, and each WatchJob stream for its whole life, holds an encode buffer of this
//! starting size; jobd's messages are mostly well under a kibibyte, and a buffer grows when a
//! larger one (a big payload or result) comes. With 8 KiB, the buffers alone were a third of
//! jobd's memory with 10,000 open streams (see BENCHMARKS.md).

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::BufferSettings;
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Bytes a call's encoder and decoder start with.
const BUFFER_SIZE: usize = 512;

/// Encoded bytes after which a stream yields to the runtime: tonic's default.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// tonic_prost's codec with `BUFFER_SIZE` buffers; build.rs names it as the codec of every
/// generated service and client.
#[derive(Debug)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}
