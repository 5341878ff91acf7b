//! The steps of a create and a removal on a Redis Cluster, where a session's record and its
//! principal's sessions are in two slots, and the repair of a slot a step cut off left held by
//! no record (the module doc of `store::session::redis` says why they are safe).

use std::{sync::Arc, time::Duration};

use ::redis::ToRedisArgs;

use crate::{
    error::ArcpError,
    ids::{Epoch, SessionId},
    store::redis::{millis, query_loading, Connection},
};

use super::remote::{corrupt, Names, Remote};

/// How long a member of a principal's sessions may go without a record before another
/// replica's create may take it for one a step cut off: far longer than a create's two steps
/// take, each of which times out within seconds.
pub(super) const GRACE: Duration = Duration::from_secs(30);

/// How long the mark of a create given up on lasts, refusing a late write of its record:
/// far longer than a call can be on its way.
const GIVEN_UP: Duration = Duration::from_secs(600);

/// Starts the repair of `session`'s slot in `joined`, on its own task.
fn start_repair(remote: &Arc<Remote>, session: SessionId, joined: String) {
    let repair = {
        let (remote, joined) = (remote.clone(), joined.clone());
        async move {
            if let Err(e) = abandon(&remote, &session, &joined).await {
                tracing::warn!(session = %session, "slot of a cut-off create not freed: {e}");
            }
        }
    };
    remote.repairs.spawn(joined, repair);
}

/// Frees `session`'s slot in `joined` unless it has a record, first marking its create given
/// up, so that a write of the record still on its way is refused. Returns whether it freed
/// it.
pub(super) async fn abandon(
    remote: &Remote,
    session: &SessionId,
    joined: &str,
) -> Result<bool, ArcpError> {
    let names = remote.names(session);
    let mut conn = remote.redis.get().await?;
    let unrecorded: i64 = remote
        .scripts
        .abandon
        .key(&names.record)
        .key(&names.given_up)
        .arg(millis(GIVEN_UP))
        .invoke_async(&mut conn)
        .await
        .map_err(|e| remote.redis.unavailable(e))?;
    if unrecorded == 1 {
        leave(remote, &mut conn, joined, session).await?;
    }
    Ok(unrecorded == 1)
}

/// Takes `session` out of `joined`.
async fn leave(
    remote: &Remote,
    conn: &mut Connection,
    joined: &str,
    session: &SessionId,
) -> Result<(), ArcpError> {
    let _: i64 = remote
        .scripts
        .leave
        .key(joined)
        .arg(session.as_str())
        .invoke_async(conn)
        .await
        .map_err(|e| remote.redis.unavailable(e))?;
    Ok(())
}

/// A create's slot between its two steps: dropped armed (the call cut off, or its record not
/// written), it starts the slot's repair.
struct Joining<'a> {
    remote: &'a Arc<Remote>,
    session: &'a SessionId,
    joined: &'a str,
    armed: bool,
}

impl Drop for Joining<'_> {
    fn drop(&mut self) {
        if self.armed {
            start_repair(self.remote, self.session.clone(), self.joined.to_owned());
        }
    }
}

/// What a create asks for: the session, its keys, the key of its principal's sessions, and
/// the arguments of the create's scripts (`scripts.rs`).
pub(super) struct Create<'a, A> {
    pub(super) session: &'a SessionId,
    pub(super) epoch: Epoch,
    pub(super) names: &'a Names,
    pub(super) joined: &'a str,
    pub(super) args: A,
}

/// Creates a session in two steps, one per slot: joins the principal's sessions (freeing the
/// slots of cut-off creates and removals if they are full), then writes the record. Returns
/// the record's version, or `None` if the principal holds its cap.
pub(super) async fn create<A: ToRedisArgs + Clone + Send + Sync>(
    remote: &Arc<Remote>,
    conn: &mut Connection,
    create: Create<'_, A>,
) -> Result<Option<u64>, ArcpError> {
    // Armed before the join is sent: a join cut off may have taken the slot all the same.
    let mut joining = Joining {
        remote,
        session: create.session,
        joined: create.joined,
        armed: true,
    };
    let mut retried = false;
    // A repair that ends while the join is on its way freed its slot too late for it.
    let mut repairing = remote.repairs.under_way(create.joined);
    loop {
        let answer: Vec<String> = remote
            .scripts
            .join
            .key(create.joined)
            .arg(create.args.clone())
            .invoke_async(conn)
            .await
            .map_err(|e| remote.redis.unavailable(e))?;
        match answer.split_first() {
            Some((joined, [])) if joined == "joined" => break,
            Some((full, candidates)) if full == "full" => {
                // Nothing joined: there is no slot to repair.
                repairing |= remote.repairs.settle(create.joined).await > 0;
                let mut freed = false;
                for candidate in candidates {
                    let candidate = SessionId::new(candidate.clone());
                    freed |= abandon(remote, &candidate, create.joined).await?;
                }
                if retried || !(repairing || freed) {
                    joining.armed = false;
                    return Ok(None);
                }
                retried = true;
                repairing = false;
            }
            _ => return Err(corrupt("an unknown answer to a join")),
        }
    }
    let mut pipe = ::redis::pipe();
    pipe.cmd("HSET")
        .arg(&remote.attached_here)
        .arg(create.session.as_str())
        .arg(create.epoch.get())
        .ignore()
        .invoke_script(
            remote
                .scripts
                .write
                .key(&create.names.record)
                .key(&create.names.given_up)
                .arg(create.args),
        );
    let (answer,): (Vec<u64>,) = query_loading(conn, &pipe, &[&remote.scripts.write])
        .await
        .map_err(|e| remote.redis.unavailable(e))?;
    match answer.as_slice() {
        [1, version] => {
            joining.armed = false;
            Ok(Some(*version))
        }
        [2] => {
            // Another replica's repair took this create for cut off, and freed its slot.
            joining.armed = false;
            remote.unindex(create.session, create.epoch).await;
            Err(ArcpError::Internal(format!(
                "the session store gave up on creating session {}, which took longer than \
                 {GRACE:?}; try again",
                create.session
            )))
        }
        _ => Err(corrupt("an unknown answer to a create")),
    }
}

/// Removes a session in two steps, one per slot: deletes the record (and its attachment
/// lock), then frees its slot in the principal's sessions the record named.
pub(super) async fn remove(
    remote: &Remote,
    conn: &mut Connection,
    session: &SessionId,
    names: &Names,
) -> Result<(), ArcpError> {
    let joined: Option<String> = remote
        .scripts
        .drop
        .key(&names.record)
        .key(&names.lock)
        .invoke_async(conn)
        .await
        .map_err(|e| remote.redis.unavailable(e))?;
    match joined {
        Some(joined) => leave(remote, conn, &joined, session).await,
        None => Ok(()),
    }
}
