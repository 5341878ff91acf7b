//! The protobuf codecs of the `arcp.v1` service: tonic's prost codec with smaller initial
//! buffers and a decoder that reads each message as one slice, and the server's session
//! codec, which encodes the `WireFrame`s of `super::wire` and hands on a client message that
//! does not decode rather than failing the stream on it.
//!
//! tonic gives every stream an 8 KiB encode and an 8 KiB decode buffer up front. A gateway
//! holds thousands of mostly idle sessions whose frames are a few hundred bytes, so most of
//! that memory would never be used; the buffers still grow on demand for busy streams.

use std::marker::PhantomData;

use prost::{
    bytes::{Buf, BufMut},
    Message,
};
use tonic::{
    codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    Status,
};
use tonic_prost::{ProstCodec, ProstEncoder};

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
    type Decoder = SliceDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(buffer_settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        SliceDecoder(PhantomData)
    }
}

/// Decodes a message with prost from the contiguous bytes tonic has buffered for it.
///
/// tonic hands a decoder the message through [`DecodeBuf`], a length-limited view of its
/// receive buffer. prost reading through that view pays a bounds check and a `BytesMut`
/// cursor update for every varint and every string; reading the same bytes as one `&[u8]`
/// pays a pointer bump. The buffer holds a whole message before tonic calls the decoder, so
/// the slice is always available; the view is the fallback should that ever change.
#[derive(Debug, Clone, Copy)]
pub struct SliceDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for SliceDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // tonic maps prost's errors to INTERNAL too (gRPC's status-code guidance).
        decode_whole(buf)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}

/// Decodes the whole message in `buf`, as one slice when it is one, and consumes all of it
/// whether or not it decodes.
fn decode_whole<U: Message + Default>(buf: &mut DecodeBuf<'_>) -> Result<U, prost::DecodeError> {
    let len = buf.remaining();
    match buf.chunk() {
        whole if whole.len() == len => {
            let decoded = U::decode(whole);
            buf.advance(len);
            decoded
        }
        _ => {
            let decoded = U::decode(&mut *buf);
            let rest = buf.remaining();
            buf.advance(rest);
            decoded
        }
    }
}

/// A client message as the session codec read it.
// Nearly every message is a frame: boxing it would cost an allocation for each to save bytes on
// the rare one that is not.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A client frame.
    Frame(proto::ClientFrame),
    /// A complete message whose bytes are not a `ClientFrame`.
    Undecodable(prost::DecodeError),
}

/// Decodes client frames for the session stream, never failing on a message's bytes.
///
/// A decoder error leaves tonic's stream in the middle of the message: it would read the bytes
/// after it as the next message's header, so the stream cannot go on. A message that does not
/// decode is instead consumed whole and handed on as [`Incoming::Undecodable`]; the session
/// answers it and reads on.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FrameDecoder;

impl Decoder for FrameDecoder {
    type Item = Incoming;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Incoming>, Status> {
        Ok(Some(match decode_whole(buf) {
            Ok(frame) => Incoming::Frame(frame),
            Err(error) => Incoming::Undecodable(error),
        }))
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}

/// The gateway's side of a session stream: decodes client frames with [`FrameDecoder`],
/// encodes [`WireFrame`]s.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SessionCodec;

impl Codec for SessionCodec {
    type Encode = WireFrame;
    type Decode = Incoming;
    type Encoder = WireEncoder;
    type Decoder = FrameDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        WireEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        FrameDecoder
    }
}

/// Encodes [`WireFrame`]s, and sizes a busy stream's buffer for a whole batch.
///
/// tonic encodes the frames a stream has ready into one buffer and hands it to the transport
/// once it holds [`YIELD_THRESHOLD`] bytes or the stream has nothing more ready. The transport
/// still holds the previous batch when the next one starts, so the next batch gets a fresh
/// allocation of the initial [`BUFFER_SIZE`], which then doubles frame by frame: five
/// reallocations, each copying what the batch held so far, for every 32 KiB sent. Once a batch
/// has shown the stream to be busy, the encoder reserves the rest of the batch at once.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct WireEncoder {
    batch: BatchTracker,
}

impl Encoder for WireEncoder {
    type Item = WireFrame;
    type Error = Status;

    fn encode(&mut self, item: WireFrame, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        if let Some(room) = self
            .batch
            .room_to_reserve(dst.remaining_mut(), dst.chunk_mut().len())
        {
            dst.reserve(room);
        }
        let encoded = item
            .encode(dst)
            .map_err(|e| Status::internal(format!("encoding a server frame: {e}")));
        self.batch.encoded(dst.remaining_mut());
        encoded
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}

/// What a batch must already hold for its stream to count as busy.
const BUSY_BATCH: usize = 4 * 1024;
/// Room a busy batch reserves beyond the yield threshold, for the frame that crosses it.
const LOW_ROOM: usize = 1024;

/// Follows tonic's batches through the buffer's `remaining_mut`, which falls by what each frame
/// writes and rises again when tonic hands the batch to the transport and empties the buffer.
#[derive(Debug, Clone, Copy, Default)]
struct BatchTracker {
    /// `remaining_mut` when the current batch began.
    start: usize,
    /// `remaining_mut` after the last frame.
    after_last: usize,
}

impl BatchTracker {
    /// Before a frame: how much to reserve, given the buffer's `remaining_mut` and the spare
    /// capacity of its current allocation. A busy batch reserves, once, room for the rest of
    /// the batch.
    fn room_to_reserve(&mut self, remaining: usize, spare: usize) -> Option<usize> {
        if remaining > self.after_last {
            self.start = remaining;
            return None;
        }
        let taken = self.start.saturating_sub(remaining);
        let batch_room = YIELD_THRESHOLD + LOW_ROOM;
        (taken >= BUSY_BATCH && taken + spare < batch_room).then(|| batch_room - taken)
    }

    /// After a frame, with the buffer's `remaining_mut`.
    fn encoded(&mut self, remaining: usize) {
        self.after_last = remaining;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `frames` frames of `size` bytes through a tracker as tonic writes them into a
    /// `BytesMut`, whose `remaining_mut` is `usize::MAX - len`: a 5-byte header, then the
    /// frame, handing the batch over every `per_batch` frames. Returns the frames before which
    /// it reserved.
    fn reservations(
        tracker: &mut BatchTracker,
        frames: usize,
        size: usize,
        per_batch: usize,
    ) -> Vec<usize> {
        let (mut len, mut capacity, mut reserved) = (0, BUFFER_SIZE, Vec::new());
        for n in 0..frames {
            if n % per_batch == 0 {
                // tonic splits the batch off: a new, empty buffer of the initial size.
                (len, capacity) = (0, BUFFER_SIZE);
            }
            len += 5;
            capacity = capacity.max(len);
            if let Some(room) = tracker.room_to_reserve(usize::MAX - len, capacity - len) {
                capacity = len + room;
                reserved.push(n);
            }
            len += size;
            capacity = capacity.max(len);
            tracker.encoded(usize::MAX - len);
        }
        reserved
    }

    #[test]
    fn a_busy_stream_reserves_once_per_batch() {
        // 120 frames of 269 bytes make a 32 KiB batch.
        let reserved = reservations(&mut BatchTracker::default(), 360, 269, 120);
        // Once 4 KiB of each batch (274 bytes a frame with its header) are written, when the
        // 1 KiB it started with is long full.
        let first = BUSY_BATCH.div_ceil(274);
        assert_eq!(reserved, [first, 120 + first, 240 + first]);
    }

    #[test]
    fn a_quiet_stream_never_reserves() {
        // A frame per batch (a ticking job), or a few small frames together (a job starting).
        let mut tracker = BatchTracker::default();
        assert!(reservations(&mut tracker, 1000, 150, 1).is_empty());
        assert!(reservations(&mut tracker, 1000, 300, 5).is_empty());
    }
}
