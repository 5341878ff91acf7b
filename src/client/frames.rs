//! The frames a client builds and the answers it reads in them.

use crate::{
    error::{ArcpError, ErrorCode},
    proto::{
        self, client_frame::Payload as In, server_frame::Payload as Out, ClientFrame, ServerFrame,
    },
};

/// A client frame with `payload` and the message id `id` (empty for none).
pub(super) fn frame(payload: In, id: String) -> ClientFrame {
    ClientFrame {
        id,
        payload: Some(payload),
        ..Default::default()
    }
}

/// The `request_id` a frame answers, if it names one.
pub(super) fn request_id(frame: &ServerFrame) -> Option<&str> {
    let id = match &frame.payload {
        Some(Out::SessionError(e)) => &e.request_id,
        Some(Out::SessionJobs(j)) => &j.request_id,
        Some(Out::JobAccepted(a)) => &a.request_id,
        Some(Out::JobSubscribed(s)) => &s.request_id,
        _ => return None,
    };
    (!id.is_empty()).then_some(id.as_str())
}

/// A `session_error` as the error it names.
pub(super) fn session_error(e: &proto::SessionError) -> ArcpError {
    let code = ErrorCode::parse(&e.code).unwrap_or(ErrorCode::InternalError);
    ArcpError::from_code(code, e.message.clone())
}
