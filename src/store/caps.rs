//! The answer to a request over one of the caps the stores enforce (§14: sessions per
//! principal, running jobs per session and per principal, subscriptions per session).

use crate::error::ArcpError;

/// `PERMISSION_DENIED` (§12 has no code for exhausted resources) naming the setting and its
/// value, so that an operator knows what to raise and a client what frees a slot. `holds` says
/// who holds what, e.g. "this session already runs as many jobs"; `remedy` what frees a slot.
pub fn over_cap(holds: &str, setting: &str, cap: usize, remedy: &str) -> ArcpError {
    ArcpError::PermissionDenied(format!("{holds} as {setting} = {cap} allows; {remedy}"))
}
