//! A command run in a pseudo-terminal: a detached tmux session on a tmux server of the test's
//! own (its own socket), whose screen the test reads with `capture-pane`, as a user would see
//! it. Without tmux the test fails and says so.

use std::{
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use super::PROCESS_TIMEOUT;

/// The columns and rows of the terminal.
const COLUMNS: u16 = 120;
const ROWS: u16 = 40;

/// A command running in a terminal of its own; the tmux server ends with it when dropped.
pub struct Terminal {
    socket: PathBuf,
    script: PathBuf,
}

impl Terminal {
    /// Runs `args` (a program and its arguments) in a new terminal; once it exits the screen
    /// shows `exit status N`, and stays.
    pub fn start(args: &[&str]) -> Terminal {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let name = format!(
            "tmux-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let socket = tmp.join(format!("{name}.sock"));
        let script = tmp.join(format!("{name}.sh"));
        let line = args
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ");
        std::fs::write(
            &script,
            format!("{line}\necho \"exit status $?\"\nexec sleep 3600\n"),
        )
        .expect("write the terminal's script");
        let started = Command::new("tmux")
            .arg("-S")
            .arg(&socket)
            .args(["new-session", "-d", "-x"])
            .arg(COLUMNS.to_string())
            .arg("-y")
            .arg(ROWS.to_string())
            .arg(format!("sh {}", shell_quote(&script.to_string_lossy())))
            .env_remove("TMUX")
            .status()
            .unwrap_or_else(|e| {
                panic!("these tests need tmux on PATH (apt-get install tmux): {e}")
            });
        assert!(started.success(), "tmux new-session failed: {started}");
        Terminal { socket, script }
    }

    /// The screen as it is now, one line a row, without colours.
    pub fn screen(&self) -> String {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(["capture-pane", "-p"])
            .output()
            .expect("run tmux capture-pane");
        assert!(
            out.status.success(),
            "tmux capture-pane failed: {}",
            out.status
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Polls the screen until `shows` holds of it, which `what` names; returns that screen.
    /// A guard against hangs bounded by [`PROCESS_TIMEOUT`], not a timing assertion.
    pub async fn wait_for(&self, what: &str, shows: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + PROCESS_TIMEOUT;
        loop {
            let screen = self.screen();
            if shows(&screen) {
                return screen;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the terminal did not show {what} within {PROCESS_TIMEOUT:?}; screen:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the command to exit; its exit status and the screen then.
    pub async fn exit_status(&self) -> (i32, String) {
        let screen = self
            .wait_for("`exit status`", |s| s.contains("exit status "))
            .await;
        let status = screen
            .lines()
            .find_map(|l| l.trim().strip_prefix("exit status "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no exit status on the screen:\n{screen}"));
        (status, screen)
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .status();
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(&self.script);
    }
}

/// `arg` as one word of a `sh` command line.
fn shell_quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
}
