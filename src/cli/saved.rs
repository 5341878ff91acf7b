//! The sessions the client's submissions leave resumable: one file per job, under the state
//! directory, holding where its submitting session can be taken up again.
//!
//! Only the session that submitted a job may cancel it (§7.4); a session resumed carries that
//! authority, a new one does not (§7.7). So `client submit` keeps its session's resume point
//! on disk from the job's acceptance to its end, rewritten on every resume since the gateway
//! rotates the token each time, and `client cancel JOB` or `client attach JOB`, run later or
//! from another terminal, resume that session. A `client submit` that dies (a closed terminal,
//! a lost SSH connection) leaves its job to the gateway's resume window, and the file lets it
//! be taken up again before the window closes.
//!
//! The token in the file is a secret: the directory is made `0700` and each file `0600`, and
//! written whole (a temporary file renamed over it), so a reader never sees half a token.

use std::{
    fs,
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    client::{Client, ResumePoint},
    error::ArcpError,
};

/// The directory a job's session files go in, `DIR/sessions`.
#[derive(Clone, Debug)]
pub struct Saved {
    dir: PathBuf,
}

/// A session file's contents.
#[derive(Serialize, Deserialize)]
struct File {
    job_id: String,
    session_id: String,
    resume_token: String,
    last_event_seq: u64,
}

impl Saved {
    /// The session files under `state_dir`, or, without one, under `$XDG_STATE_HOME/arcp-gateway`
    /// or `$HOME/.local/state/arcp-gateway`; `None` when neither variable is set.
    pub fn under(state_dir: Option<&Path>) -> Option<Saved> {
        let state_dir = match state_dir {
            Some(dir) => dir.to_owned(),
            None => default_state_dir()?,
        };
        Some(Saved {
            dir: state_dir.join("sessions"),
        })
    }

    /// Records `point` as where the session that submitted `job` can be taken up.
    pub fn save(&self, job: &str, point: &ResumePoint) -> Result<(), ArcpError> {
        let file = File {
            job_id: job.to_owned(),
            session_id: point.session_id.clone(),
            resume_token: point.resume_token.clone(),
            last_event_seq: point.last_event_seq,
        };
        let text = serde_json::to_vec(&file).map_err(|e| self.failed("encode", e))?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| self.failed("create", e))?;
        let path = self.path(job)?;
        let temporary = path.with_extension(format!("json.{}", std::process::id()));
        let written = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .and_then(|mut f| f.write_all(&text).and_then(|()| f.sync_all()))
            .and_then(|()| fs::rename(&temporary, &path));
        if let Err(e) = written {
            let _ = fs::remove_file(&temporary);
            return Err(self.failed("write", e));
        }
        Ok(())
    }

    /// Where the session that submitted `job` can be taken up, if a file says so.
    pub fn load(&self, job: &str) -> Result<Option<ResumePoint>, ArcpError> {
        let text = match fs::read(self.path(job)?) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.failed("read", e)),
        };
        let file: File = serde_json::from_slice(&text).map_err(|e| self.failed("parse", e))?;
        if file.job_id != job {
            return Err(ArcpError::InvalidRequest(format!(
                "the session file of job {job} in {} names job {}",
                self.dir.display(),
                file.job_id
            )));
        }
        Ok(Some(ResumePoint {
            session_id: file.session_id,
            resume_token: file.resume_token,
            last_event_seq: file.last_event_seq,
        }))
    }

    /// Forgets the session of `job`: it ended, or the session can no longer be resumed.
    pub fn forget(&self, job: &str) {
        if let Ok(path) = self.path(job) {
            let _ = fs::remove_file(path);
        }
    }

    /// The directory the files go in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of `job`; a job id that could name another path is refused.
    fn path(&self, job: &str) -> Result<PathBuf, ArcpError> {
        let plain = !job.is_empty()
            && job
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !plain {
            return Err(ArcpError::InvalidRequest(format!(
                "{job:?} is not a job id (letters, digits, '_' and '-')"
            )));
        }
        Ok(self.dir.join(format!("{job}.json")))
    }

    fn failed(&self, what: &str, error: impl std::fmt::Display) -> ArcpError {
        ArcpError::Internal(format!(
            "cannot {what} the session file in {}: {error}",
            self.dir.display()
        ))
    }
}

/// A followed job's session, kept in its file: saved again after each resume (the gateway
/// rotated the token), forgotten at the job's end.
pub struct Kept {
    saved: Saved,
    job: String,
    /// The client's resume count at the last save; `None` before the first.
    saved_at: Option<u64>,
    warned: bool,
}

impl Kept {
    /// The session of `job`, kept in `saved`; nothing is written before [`Kept::refresh`].
    pub fn new(saved: Saved, job: &str) -> Kept {
        Kept {
            saved,
            job: job.to_owned(),
            saved_at: None,
            warned: false,
        }
    }

    /// Saves where `client`'s session can be taken up, unless it was saved since its latest
    /// resume. A file that cannot be written costs only `attach` and `cancel` their way in:
    /// the job goes on, and the first failure is said on stderr.
    pub fn refresh(&mut self, client: &Client) {
        if self.saved_at == Some(client.resumes()) {
            return;
        }
        self.saved_at = Some(client.resumes());
        if let Err(e) = self.saved.save(&self.job, &client.resume_point()) {
            if !std::mem::replace(&mut self.warned, true) {
                eprintln!(
                    "arcp-gateway client: the session is not kept for `attach` or `cancel`: {}",
                    e.message()
                );
            }
        }
    }

    /// The job ended: its session is no use any more.
    pub fn forget(self) {
        self.saved.forget(&self.job);
    }
}

fn default_state_dir() -> Option<PathBuf> {
    let non_empty = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    non_empty("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| non_empty("HOME").map(|home| PathBuf::from(home).join(".local/state")))
        .map(|dir| dir.join("arcp-gateway"))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn point(token: &str, seq: u64) -> ResumePoint {
        ResumePoint {
            session_id: "sess_1".into(),
            resume_token: token.into(),
            last_event_seq: seq,
        }
    }

    fn saved() -> (Saved, PathBuf) {
        let root = std::env::temp_dir().join(format!(
            "arcp-saved-{}-{}",
            std::process::id(),
            uuid::Uuid::now_v7()
        ));
        (Saved::under(Some(&root)).expect("a directory"), root)
    }

    #[test]
    fn a_saved_point_loads_back_is_replaced_by_the_next_and_is_private() {
        let (saved, root) = saved();
        assert_eq!(saved.load("job_a").unwrap(), None);
        saved.save("job_a", &point("t1", 3)).unwrap();
        saved.save("job_a", &point("t2", 9)).unwrap();
        assert_eq!(saved.load("job_a").unwrap(), Some(point("t2", 9)));
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(saved.dir()), 0o700);
        assert_eq!(mode(&saved.dir().join("job_a.json")), 0o600);
        assert_eq!(
            fs::read_dir(saved.dir()).unwrap().count(),
            1,
            "no temporary file left"
        );
        saved.forget("job_a");
        assert_eq!(saved.load("job_a").unwrap(), None);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_job_id_that_could_name_another_path_is_refused() {
        let (saved, _) = saved();
        for job in ["", "../x", "a/b", "job.json"] {
            assert!(saved.save(job, &point("t", 1)).is_err(), "{job:?}");
            assert!(saved.load(job).is_err(), "{job:?}");
        }
    }

    #[test]
    fn a_point_s_debug_form_hides_the_token() {
        let shown = format!("{:?}", point("very-secret", 1));
        assert!(!shown.contains("very-secret"), "{shown}");
    }
}
