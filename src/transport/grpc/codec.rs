//! The protobuf codecs of the `arcp.v1` service: tonic's prost codec with smaller initial
//! buffers, and the server's session codec, which encodes [`WireFrame`]s.
//!
//! tonic gives every stream an 8 KiB encode and an 8 KiB decode buffer up front. A gateway
//! holds thousands of mostly idle sessions whose frames are a few hundred bytes, so most of
//! that memory would never be used; the buffers still grow on demand for busy streams.

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    codec::{BufferSettings, Codec, EncodeBuf, Encoder},
    Status,
};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

use crate::proto;

use super::wire::WireFrame;

/// Initial per-stream buffer size, in bytes.
const BUFFER_SIZE: usize = 1024;
/// How much an encoder batches before handing bytes to the transport (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

fn buffer_settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

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
        ProstCodec::<T, U>::raw_encoder(buffer_settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(buffer_settings())
    }
}

/// The gateway's side of a session stream: decodes client frames with prost, encodes
/// [`WireFrame`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionCodec;

impl Codec for SessionCodec {
    type Encode = WireFrame;
    type Decode = proto::ClientFrame;
    type Encoder = WireEncoder;
    type Decoder = ProstDecoder<proto::ClientFrame>;

    fn encoder(&mut self) -> Self::Encoder {
        WireEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<proto::ServerFrame, proto::ClientFrame>::raw_decoder(buffer_settings())
    }
}

/// Encodes [`WireFrame`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct WireEncoder;

impl Encoder for WireEncoder {
    type Item = WireFrame;
    type Error = Status;

    fn encode(&mut self, item: WireFrame, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding a server frame: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}
