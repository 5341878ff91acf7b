//! The store's budget: the bytes all logs retain, counted in one key, and the detached
//! sessions, listed by the order they detached in, that lose their oldest frames when the
//! count is over the budget.
//!
//! These keys share the hash tag `{log-budget}`, a slot of their own, and no script on a log
//! reaches them: each change to a log is one script on its session's slot, and the count and
//! the list follow in a second step, here (the order, and the repair, are in the module doc
//! of `store::log::redis`; the steps themselves in `enforce.rs`). What a replica owes the count (bytes a log's script freed, or
//! counted for an append it refused) it keeps in [`Budget::owe`] and adds to the count with
//! its next change of it: an append's, which is pipelined with the append script, or the
//! upkeep's, each second.

use std::sync::atomic::{AtomicI64, Ordering};

use ::redis::{Pipeline, Value};

/// The budget's keys, and what this replica owes its count.
pub(super) struct Budget {
    /// The bytes all logs retain.
    pub(super) retained: String,
    /// The detached sessions holding frames, scored by the order they detached in.
    pub(super) detached: String,
    /// The counter that order is drawn from.
    pub(super) detach_order: String,
    /// Every session with a log, for the recount.
    pub(super) logs: String,
    /// The budget, in bytes.
    pub(super) bytes: i64,
    /// Bytes to add to the count that this replica has not added yet.
    pending: AtomicI64,
    /// Held while this replica brings the store within the budget, so that its logs' appends,
    /// all over the budget at once, do not each evict what one had to.
    pub(super) enforcing: tokio::sync::Mutex<()>,
}

/// The count and the oldest detached session, as a change of them answered.
pub(super) struct Position {
    /// The bytes all logs retain, less what this replica still owes.
    pub(super) total: i64,
    /// The session that detached longest ago, if any is listed.
    pub(super) oldest: Option<String>,
}

/// A change to the detached list beside a change of the count.
#[derive(Clone, Copy)]
pub(super) enum Listing<'a> {
    /// None.
    Keep,
    /// The session detached: it goes last on the list.
    List(&'a str),
    /// The session is off the list: emptied, attached again, or gone.
    Unlist(&'a str),
}

impl Budget {
    /// The budget of `bytes` under `prefix`.
    pub(super) fn new(prefix: &str, bytes: u64) -> Self {
        let key = |kind: &str| format!("{prefix}:{{log-budget}}:{kind}");
        Budget {
            retained: key("retained"),
            detached: key("detached"),
            detach_order: key("detach-order"),
            logs: key("logs"),
            bytes: i64::try_from(bytes).unwrap_or(i64::MAX),
            pending: AtomicI64::new(0),
            enforcing: tokio::sync::Mutex::new(()),
        }
    }

    /// Records `bytes` to add to the count (negative: to take off) with the next change of it.
    pub(super) fn owe(&self, bytes: i64) {
        if bytes != 0 {
            self.pending.fetch_add(bytes, Ordering::AcqRel);
        }
    }

    /// Whether this replica owes the count anything.
    pub(super) fn owes(&self) -> bool {
        self.pending.load(Ordering::Acquire) != 0
    }

    /// Takes what is owed, to add it with a change being sent.
    pub(super) fn take(&self) -> i64 {
        self.pending.swap(0, Ordering::AcqRel)
    }

    /// Adds to `pipe` the count's increase by `added` and what is owed, and the oldest
    /// detached session: an append's tally, beside its script. The answer, the last two
    /// values, is read by [`Budget::tallied`].
    pub(super) fn tally(&self, pipe: &mut Pipeline, added: i64) {
        pipe.cmd("INCRBY")
            .arg(&self.retained)
            .arg(added.saturating_add(self.take()))
            .cmd("ZRANGE")
            .arg(&self.detached)
            .arg(0)
            .arg(0);
    }

    /// The count and oldest detached session a tally answered, `[count, [oldest]]`; see
    /// [`Budget::position`].
    pub(super) fn tallied(answer: &[Value]) -> Option<(i64, Option<String>)> {
        let [Value::Int(total), Value::Array(oldest)] = answer else {
            return None;
        };
        let oldest = match oldest.first() {
            Some(Value::BulkString(session)) => Some(String::from_utf8(session.clone()).ok()?),
            None => None,
            Some(_) => return None,
        };
        Some((*total, oldest))
    }

    /// The position from the count `total` Redis answered and the oldest detached session,
    /// with what this replica still owes the count.
    pub(super) fn position(&self, total: i64, oldest: Option<String>) -> Position {
        Position {
            total: total.saturating_add(self.pending.load(Ordering::Acquire)),
            oldest,
        }
    }

    /// Whether `position` calls for evicting from a detached session.
    pub(super) fn over(&self, position: &Position) -> bool {
        position.total > self.bytes && position.oldest.is_some()
    }
}
