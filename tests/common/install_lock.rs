//! An exclusive lock on a file, held while one test process installs an environment that other
//! test processes (nextest runs each test in its own) wait for rather than build over.

use std::{fs::File, path::Path};

/// Locks `path` (created if missing) for this process until the returned file is dropped;
/// `what` names the environment in the error.
pub fn install_lock(path: &Path, what: &str) -> Result<File, String> {
    let lock = File::create(path).map_err(|e| format!("cannot create {what}'s lock: {e}"))?;
    // SAFETY: flock on a descriptor this function owns; released when `lock` is dropped.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
        return Err(format!(
            "cannot lock {what}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(lock)
}
