//! What replicas say to each other on their channels, as JSON: a nudge to look for cancel
//! requests, requests to subscribe or unsubscribe a session, and the replies to those.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::{
    error::{ArcpError, ErrorCode},
    ids::{EventSeq, Principal, SessionId},
    protocol::Features,
    store::jobs::Subscriber,
};

/// One message on a replica's channel.
#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(super) enum Message {
    /// A cancel request for the job was written into its hash.
    Cancel { job: String },
    /// Subscribe `subscriber` to the job, and reply to `from` under `request`.
    Subscribe {
        request: u64,
        from: String,
        job: String,
        subscriber: WireSubscriber,
    },
    /// Unsubscribe `session` from the job, and reply to `from` under `request`.
    Unsubscribe {
        request: u64,
        from: String,
        job: String,
        session: String,
    },
    /// The answer to request `request`.
    Reply { request: u64, outcome: Outcome },
}

impl Message {
    pub(super) fn to_json(&self) -> Result<String, ArcpError> {
        serde_json::to_string(self).map_err(|e| {
            ArcpError::Internal(format!("a job directory message could not be encoded: {e}"))
        })
    }
}

/// How a request to the replica running a job went.
#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(super) enum Outcome {
    /// The job took the subscriber.
    Subscribed,
    /// The job had ended, with these final fields (as its hash holds them).
    Ended { fields: HashMap<String, String> },
    /// The job dropped the session, or it was not subscribed.
    Unsubscribed { was: bool },
    /// The job, or its replica, refused with this error.
    Failed { code: String, message: String },
}

impl Outcome {
    pub(super) fn failed(e: &ArcpError) -> Outcome {
        Outcome::Failed {
            code: e.code().as_str().to_owned(),
            message: e.message().to_owned(),
        }
    }

    /// The error a [`Outcome::Failed`] carries, as the replica that failed had it.
    pub(super) fn error(code: &str, message: String) -> ArcpError {
        match ErrorCode::parse(code) {
            Some(code) => ArcpError::from_code(code, message),
            None => ArcpError::Internal(format!("{code}: {message}")),
        }
    }
}

/// A [`Subscriber`] on the wire.
#[derive(Serialize, Deserialize, Debug)]
pub(super) struct WireSubscriber {
    session: String,
    principal: String,
    features: Vec<String>,
    history: Option<u64>,
    request_id: Option<String>,
}

impl From<&Subscriber> for WireSubscriber {
    fn from(s: &Subscriber) -> Self {
        WireSubscriber {
            session: s.session.as_str().to_owned(),
            principal: s.principal.as_str().to_owned(),
            features: s.features.names(),
            history: s.history.map(EventSeq::get),
            request_id: s.request_id.clone(),
        }
    }
}

impl From<WireSubscriber> for Subscriber {
    fn from(s: WireSubscriber) -> Self {
        Subscriber {
            session: SessionId::new(s.session),
            principal: Principal::new(s.principal),
            // Every replica runs the same build, so the names are all its own.
            features: Features::supported().negotiate(&s.features),
            history: s.history.map(EventSeq),
            request_id: s.request_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscriber_and_an_error_cross_between_replicas() {
        let subscriber = Subscriber {
            session: SessionId::generate(),
            principal: Principal::new("alice"),
            features: Features::supported().negotiate(&["progress", "subscribe"]),
            history: Some(EventSeq(3)),
            request_id: Some("r1".into()),
        };
        let sent = Message::Subscribe {
            request: 7,
            from: "b".into(),
            job: "job_1".into(),
            subscriber: WireSubscriber::from(&subscriber),
        };
        let got: Message = serde_json::from_str(&sent.to_json().unwrap()).unwrap();
        let Message::Subscribe { subscriber: s, .. } = got else {
            panic!("not a subscribe: {got:?}");
        };
        let s = Subscriber::from(s);
        assert_eq!(s.session, subscriber.session);
        assert_eq!(s.features, subscriber.features);
        assert_eq!(s.history, subscriber.history);
        assert_eq!(s.request_id, subscriber.request_id);

        let e = ArcpError::PermissionDenied("no".into());
        let Outcome::Failed { code, message } = Outcome::failed(&e) else {
            unreachable!()
        };
        assert_eq!(Outcome::error(&code, message), e);
    }
}
