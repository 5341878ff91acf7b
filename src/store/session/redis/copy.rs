//! [`LocalCopy`]: a replica's copy of one record's flow state and features, read without a
//! lock and updated from whatever reports the record's state (the replica's own scripts'
//! answers, the messages every change publishes, re-reads), newest version first: a state no
//! newer than the copy's is old news, in whatever order the reports arrive.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};

use crate::{
    ids::{Epoch, EventSeq},
    protocol::Features,
    store::session::Flow,
    sync::wakeup::Wakeup,
};

/// A record's flow state as of one of its versions.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct Versioned {
    /// The record's version.
    pub(super) version: u64,
    /// Its flow at that version.
    pub(super) flow: Flow,
}

impl Versioned {
    /// The state in `fields`: version, epoch, attached (`1` or `0`), delivered, acked.
    pub(super) fn from_fields(fields: &[u64]) -> Option<Versioned> {
        let [version, epoch, attached, delivered, acked] = *fields else {
            return None;
        };
        Some(Versioned {
            version,
            flow: Flow {
                epoch: Epoch(epoch),
                attached: attached == 1,
                delivered: EventSeq(delivered),
                acked: EventSeq(acked),
            },
        })
    }
}

/// What a message on a session's channel says.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Message<'a> {
    /// The record changed to this state; its features are those set at `features_version`,
    /// named in `features`.
    State {
        state: Versioned,
        features_version: u64,
        features: &'a str,
    },
    /// The attachment lock was released.
    Unlocked,
}

impl<'a> Message<'a> {
    /// `payload` as the scripts publish it, if it is one.
    pub(super) fn parse(payload: &'a [u8]) -> Option<Message<'a>> {
        let payload = std::str::from_utf8(payload).ok()?;
        if payload == "u" {
            return Some(Message::Unlocked);
        }
        let mut parts = payload.splitn(8, ' ');
        if parts.next()? != "s" {
            return None;
        }
        let mut numbers = [0u64; 6];
        for n in &mut numbers {
            *n = parts.next()?.parse().ok()?;
        }
        Some(Message::State {
            state: Versioned::from_fields(&numbers[..5])?,
            features_version: numbers[5],
            features: parts.next()?,
        })
    }
}

/// Features as a record keeps them: their names joined by commas.
pub(super) fn encode_features(features: &Features) -> String {
    features.names().join(",")
}

/// The features `encoded` names, of those this runtime supports; others are dropped, as a
/// replica of an older build would not know what to do with them.
pub(super) fn decode_features(encoded: &str) -> Features {
    let names: Vec<&str> = encoded.split(',').filter(|n| !n.is_empty()).collect();
    Features::supported().negotiate(&names)
}

/// One replica's copy of a record's mutable state.
pub(super) struct LocalCopy {
    epoch: AtomicU64,
    attached: AtomicBool,
    delivered: AtomicU64,
    acked: AtomicU64,
    version: AtomicU64,
    /// The features and the version that set them: they change only with an attach, so most
    /// changes carry no features to parse.
    features: RwLock<(u64, Features)>,
    /// Serialises updates, so an older state cannot overwrite part of a newer one; readers
    /// take no lock.
    updating: Mutex<()>,
    /// Rung on every change of the flow state.
    changed: Wakeup,
    /// How many releases of the attachment lock this replica heard of, and a ring on each.
    unlocks: AtomicU64,
    unlocked: Wakeup,
}

impl LocalCopy {
    pub(super) fn new(state: Versioned, features_version: u64, features: Features) -> Self {
        let Versioned { version, flow } = state;
        LocalCopy {
            epoch: AtomicU64::new(flow.epoch.get()),
            attached: AtomicBool::new(flow.attached),
            delivered: AtomicU64::new(flow.delivered.get()),
            acked: AtomicU64::new(flow.acked.get()),
            version: AtomicU64::new(version),
            features: RwLock::new((features_version, features)),
            updating: Mutex::new(()),
            changed: Wakeup::default(),
            unlocks: AtomicU64::new(0),
            unlocked: Wakeup::default(),
        }
    }

    /// The flow state: a few atomic loads.
    pub(super) fn flow(&self) -> Flow {
        Flow {
            epoch: Epoch(self.epoch.load(Ordering::Acquire)),
            attached: self.attached.load(Ordering::Acquire),
            delivered: EventSeq(self.delivered.load(Ordering::Acquire)),
            acked: EventSeq(self.acked.load(Ordering::Acquire)),
        }
    }

    pub(super) fn features(&self) -> Features {
        self.features.read().1.clone()
    }

    /// Takes `state` if it is newer than the copy's, waking whoever waits on the flow.
    pub(super) fn update(&self, state: Versioned) {
        {
            let _updating = self.updating.lock();
            if state.version <= self.version.load(Ordering::Acquire) {
                return;
            }
            let flow = state.flow;
            self.epoch.store(flow.epoch.get(), Ordering::Release);
            self.attached.store(flow.attached, Ordering::Release);
            self.delivered
                .store(flow.delivered.get(), Ordering::Release);
            self.acked.store(flow.acked.get(), Ordering::Release);
            self.version.store(state.version, Ordering::Release);
        }
        self.changed.notify();
    }

    /// Takes the features set at `version` if no newer ones are known; `features` is called
    /// only then.
    pub(super) fn update_features(&self, version: u64, features: impl FnOnce() -> Features) {
        if version <= self.features.read().0 {
            return;
        }
        let mut held = self.features.write();
        if version > held.0 {
            *held = (version, features());
        }
    }

    /// Takes what a message on the session's channel says.
    pub(super) fn hear(&self, message: Message<'_>) {
        match message {
            Message::State {
                state,
                features_version,
                features,
            } => {
                self.update_features(features_version, || decode_features(features));
                self.update(state);
            }
            Message::Unlocked => self.heard_unlock(),
        }
    }

    /// Returns once `ready` holds of the flow, re-checking it on every update.
    pub(super) async fn wait_until(&self, ready: &(dyn for<'f> Fn(&'f Flow) -> bool + Sync)) {
        self.changed.wait_until(|| ready(&self.flow())).await;
    }

    /// How many releases of the attachment lock were heard of so far.
    pub(super) fn unlocks(&self) -> u64 {
        self.unlocks.load(Ordering::Acquire)
    }

    pub(super) fn heard_unlock(&self) {
        self.unlocks.fetch_add(1, Ordering::AcqRel);
        self.unlocked.notify();
    }

    /// Returns once a release of the attachment lock after the `seen`th was heard of.
    pub(super) async fn wait_unlock(&self, seen: u64) {
        self.unlocked.wait_until(|| self.unlocks() != seen).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(version: u64, delivered: u64) -> Versioned {
        Versioned {
            version,
            flow: Flow {
                epoch: Epoch(1),
                attached: true,
                delivered: EventSeq(delivered),
                acked: EventSeq::ZERO,
            },
        }
    }

    #[test]
    fn messages_parse_as_the_scripts_publish_them() {
        assert_eq!(
            Message::parse(b"s 7 2 0 9 4 5 ack,heartbeat"),
            Some(Message::State {
                state: Versioned {
                    version: 7,
                    flow: Flow {
                        epoch: Epoch(2),
                        attached: false,
                        delivered: EventSeq(9),
                        acked: EventSeq(4),
                    },
                },
                features_version: 5,
                features: "ack,heartbeat",
            })
        );
        assert!(matches!(
            Message::parse(b"s 1 1 1 0 0 1 "),
            Some(Message::State { features: "", .. })
        ));
        assert_eq!(Message::parse(b"u"), Some(Message::Unlocked));
        for bad in [&b"s 1 2"[..], b"x 1 1 1 0 0 1 ", b"s 1 1 1 0 z 1 ", b"\xff"] {
            assert_eq!(Message::parse(bad), None);
        }
    }

    #[test]
    fn features_decode_to_the_supported_ones_named() {
        let features = Features::supported().negotiate(&["ack", "heartbeat"]);
        let decoded = decode_features(&encode_features(&features));
        assert!(decoded.has("ack") && decoded.has("heartbeat") && !decoded.has("subscribe"));
        let decoded = decode_features("ack,teleport,");
        assert_eq!(decoded.names(), vec!["ack".to_owned()]);
        assert_eq!(decode_features(""), Features::default());
    }

    #[test]
    fn only_newer_states_and_features_are_taken() {
        let copy = LocalCopy::new(state(3, 5), 3, Features::default());
        copy.update(state(2, 1));
        copy.update(state(3, 2));
        assert_eq!(copy.flow().delivered, EventSeq(5), "old news");
        copy.update(state(4, 6));
        assert_eq!(copy.flow().delivered, EventSeq(6));
        copy.update_features(3, || panic!("not parsed when not newer"));
        copy.update_features(4, || Features::supported().negotiate(&["ack"]));
        copy.update_features(2, Features::default);
        assert!(copy.features().has("ack"));
    }
}
