//! Session records: what every replica must know of a session another one opened. Who opened
//! it, the features it negotiated, and the state of its flow: which attachment (epoch) holds
//! it, whether that attachment is live, and how far its client has received and acknowledged
//! the session's log (§6.5).
//!
//! Every change a stream makes carries its attachment's [`Epoch`], and a record refuses changes
//! from any attachment but its newest: a stream that was taken over, on this process or
//! another, can neither move the flow state of its successor nor detach it. A stream attaching
//! holds the record's attachment lock from checking the client's token to committing the new
//! attachment, so two resumes of one session never interleave.
//!
//! The flow state is read on every frame a job emits (to pace the job to its reader), so a
//! record hands it out without suspending: a shared store keeps a local copy current. Changes
//! go through the store and may suspend.
//!
//! A shared store also knows which replica made each attachment, so that when a replica is
//! declared lost, another finds the sessions it held ([`SessionStore::attached_on`]) and
//! starts their resume windows, as the lost replica's streams would have on their way out. [`memory::MemorySessionStore`] is the embedded store;
//! [`redis::RedisSessionStore`] one that replicas share.

pub mod memory;
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;

use crate::{
    error::ArcpError,
    ids::{Epoch, EventSeq, Principal, ReplicaId, SessionId},
    protocol::Features,
};

/// A session to record: it starts attached to the stream that opened it, at `epoch`.
#[derive(Clone, Debug)]
pub struct NewSession {
    /// The session.
    pub id: SessionId,
    /// The principal that opened it; every resume must present the same one.
    pub principal: Principal,
    /// The effective features (§6.2).
    pub features: Features,
    /// The opening stream's attachment.
    pub epoch: Epoch,
    /// The most sessions its principal may hold at once, this one included, counting the
    /// detached ones still in their resume window (§14).
    pub max_per_principal: usize,
}

/// The flow state of a session (§6.5), as of one moment.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Flow {
    /// The newest attachment; only it may change the flow.
    pub epoch: Epoch,
    /// Whether that attachment's stream is live. Jobs pace themselves to it only then.
    pub attached: bool,
    /// The newest sequence number that stream took from the log for its client.
    pub delivered: EventSeq,
    /// The highest sequence number the client acknowledged; acks never move it backwards.
    pub acked: EventSeq,
}

/// What became of a `session.ack`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AckOutcome {
    /// Recorded; the session's acknowledged position is now `acked`.
    Recorded {
        /// The acknowledged position after this ack.
        acked: EventSeq,
    },
    /// Refused: the ack names a frame the stream never delivered.
    BeyondDelivered {
        /// What the stream delivered.
        delivered: EventSeq,
    },
    /// Refused: the acking stream's attachment was taken over.
    Superseded,
}

/// A held attachment lock; released when dropped. A shared store's lock may also expire, so
/// a holder that died cannot keep the session locked forever.
pub struct AttachmentLock(#[allow(dead_code)] Box<dyn Send + Sync>);

impl AttachmentLock {
    /// Wraps whatever releases the lock when dropped.
    pub fn new(release_on_drop: impl Send + Sync + 'static) -> Self {
        AttachmentLock(Box::new(release_on_drop))
    }
}

/// The store of every session's record.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Records a new session, attached at `session.epoch` with nothing delivered, unless its
    /// principal already holds `session.max_per_principal` sessions: then nothing is recorded
    /// and the answer is `PERMISSION_DENIED` naming the cap. The count and the insert are one
    /// step, so two racing creates (on any replicas) cannot both take the last slot.
    async fn create(&self, session: NewSession) -> Result<Arc<dyn SessionRecord>, ArcpError>;

    /// The record of an existing session; `RESUME_WINDOW_EXPIRED` once it was removed.
    async fn open(&self, id: &SessionId) -> Result<Arc<dyn SessionRecord>, ArcpError>;

    /// Forgets a session whose window closed, freeing its principal's slot.
    async fn remove(&self, id: &SessionId) -> Result<(), ArcpError>;

    /// The sessions replica `replica` attached streams to, each with the epoch of its
    /// attachment there, as far as the store knows they may still be attached: for a replica
    /// that was declared lost, the sessions to detach and start the resume windows of. Some
    /// may have been taken over since, which their epochs tell. A store of one process has no
    /// other replica, and knows none.
    async fn attached_on(&self, replica: &ReplicaId) -> Result<Vec<(SessionId, Epoch)>, ArcpError>;

    /// Forgets what [`SessionStore::attached_on`] knows of replica `replica`, once its sessions
    /// were detached.
    async fn forget_attached_on(&self, replica: &ReplicaId) -> Result<(), ArcpError>;
}

/// One session's record, as a handle.
///
/// Every async call may suspend and may be cancelled by dropping its future; a dropped call has
/// either taken full effect or none. A shared store's handles learn of a dropped call's effect,
/// as of another replica's changes, when they next hear from the store: the flow state is a
/// copy, current within a message's latency.
#[async_trait]
pub trait SessionRecord: Send + Sync + 'static {
    /// The session.
    fn id(&self) -> &SessionId;

    /// The principal that opened it.
    fn principal(&self) -> &Principal;

    /// The features of the newest attachment.
    fn features(&self) -> Features;

    /// The flow state. Each field is its latest value; read together, they are not one
    /// snapshot.
    fn flow(&self) -> Flow;

    /// Returns once `ready` holds of the flow state, re-checking it whenever the state changes,
    /// whoever changed it. Cancel-safe.
    async fn wait_flow(&self, ready: &(dyn for<'f> Fn(&'f Flow) -> bool + Sync));

    /// Takes the attachment lock, waiting for the holder to release it.
    async fn lock_attachment(&self) -> Result<AttachmentLock, ArcpError>;

    /// Makes attachment `epoch` the session's: live, delivering the frames after `from`, with
    /// `features` if given. From then on older attachments' changes are refused. Returns
    /// `false`, changing nothing, unless `epoch` is newer than the record's.
    async fn attach(
        &self,
        epoch: Epoch,
        features: Option<Features>,
        from: EventSeq,
    ) -> Result<bool, ArcpError>;

    /// Marks attachment `epoch`'s stream gone. Returns `false`, changing nothing, unless
    /// `epoch` is the record's and was live.
    async fn detach(&self, epoch: Epoch) -> Result<bool, ArcpError>;

    /// Records that attachment `epoch`'s stream took the frames through `through` from the log
    /// for its client, and wakes the jobs paced to it. Returns `false`, changing nothing, once
    /// a newer attachment took over.
    async fn record_delivered(&self, epoch: Epoch, through: EventSeq) -> Result<bool, ArcpError>;

    /// Records a `session.ack` from attachment `epoch`'s client.
    async fn record_ack(&self, epoch: Epoch, through: EventSeq) -> Result<AckOutcome, ArcpError>;
}
