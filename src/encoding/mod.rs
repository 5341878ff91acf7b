//! Encodings of the domain messages that both the stores and the transports use.
//!
//! - [`stored_frame`]: [`stored_frame::StoredFrame`], a job frame in the encoding every event
//!   log keeps: its `arcp.v1` protobuf, which the gRPC transport sends as it is.
//! - [`stored_event`]: [`stored_event::StoredEvent`], a logged event of the kinds agents emit
//!   most, read in place from its stored frame, for the text transports.
//! - [`json_value`]: free-form JSON as `google.protobuf.Value`.
//! - `job_proto`: job frames to and from the generated protobuf types.

pub(crate) mod job_proto;
pub mod json_value;
pub mod stored_event;
pub mod stored_frame;

#[cfg(test)]
pub(crate) mod fixtures;

pub use stored_frame::StoredFrame;
