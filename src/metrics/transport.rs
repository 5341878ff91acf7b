//! The transports streams, and the frames they deliver, are counted by.

/// Which transport a stream came over: the `transport` label's values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// The gRPC `Session` stream.
    #[default]
    Grpc,
    /// ARCP JSON over WebSocket.
    WebSocket,
}

impl Transport {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::WebSocket => "websocket",
        }
    }
}
