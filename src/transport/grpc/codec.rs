//! The protobuf codec of the `arcp.v1` service: tonic's prost codec with smaller initial
//! buffers.
//!
//! tonic gives every stream an 8 KiB encode and an 8 KiB decode buffer up front. A gateway
//! holds thousands of mostly idle sessions whose frames are a few hundred bytes, so most of
//! that memory would never be used; the buffers still grow on demand for busy streams.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial per-stream buffer size, in bytes.
const BUFFER_SIZE: usize = 1024;
/// How much an encoder batches before handing bytes to the transport (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// [`ProstCodec`] with `BUFFER_SIZE` buffers; named by `build.rs` for the generated code.
#[derive(Debug, Clone, Copy)]
pub struct ArcpCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for ArcpCodec<T, U> {
    fn default() -> Self {
        ArcpCodec(PhantomData)
    }
}

impl<T, U> Codec for ArcpCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }
}
