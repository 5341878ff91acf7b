//! The config file through the real binary: `config check` prints the merged settings, the
//! source of each (flags > environment > file > defaults) and no secret; every wrong key or
//! value is refused naming where it came from; and `serve --config` runs with the file's
//! settings and its `[[agents]]`.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// `text` as a config file of its own; returns its path.
fn config_file(name: &str, text: &str) -> PathBuf {
    let path = scratch(name).join("gateway.toml");
    std::fs::write(&path, text).expect("write the config file");
    path
}

/// Runs `config check FILE` with `flags` and `env`; returns the exit code, stdout, stderr.
async fn check(file: &Path, flags: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let path = file.to_str().expect("a UTF-8 path");
    let mut args = vec!["config", "check", path];
    args.extend_from_slice(flags);
    let mut cmd = command(&args);
    for (var, value) in env {
        cmd.env(var, value);
    }
    let out = tokio::time::timeout(PROCESS_TIMEOUT, cmd.output())
        .await
        .expect("config check ends")
        .expect("config check runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn config_check_prints_each_setting_with_its_source_and_no_secret() {
    let file = config_file(
        "check",
        r#"
listen = "127.0.0.1:7001"
ws-listen = "127.0.0.1:7002"
resume_window_sec = 30
heartbeat_interval_sec = 20
auth_token = ["s3cret-one=alice", "s3cret-two=bob"]
budget_exhaustion_fatal = true
store = "redis://user:hunter2@127.0.0.1:6379/0"
credential_upstream_token = "s3cret-upstream"
"#,
    );
    let (code, out, err) = check(
        &file,
        &["--heartbeat-interval-sec", "9"],
        &[
            ("ARCP_WS_LISTEN", "127.0.0.1:7003"),
            ("ARCP_MAX_LOG_FRAMES", "77"),
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    for line in [
        r#"listen = "127.0.0.1:7001"  # file"#,
        r#"ws_listen = "127.0.0.1:7003"  # environment (ARCP_WS_LISTEN)"#,
        "resume_window_sec = 30  # file",
        "heartbeat_interval_sec = 9  # flag",
        "max_log_frames = 77  # environment (ARCP_MAX_LOG_FRAMES)",
        "max_log_bytes = 67108864  # default",
        "budget_exhaustion_fatal = true  # file",
        r#"auth_token = ["***=alice", "***=bob"]  # file"#,
        r#"store = "redis://user:***@127.0.0.1:6379/0"  # file"#,
        r#"credential_upstream_token = "***"  # file"#,
        "# tls_cert is not set",
        "# agent echo 1.0.0",
    ] {
        assert!(out.lines().any(|l| l == line), "{line:?} in:\n{out}");
    }
    for secret in ["s3cret", "hunter2"] {
        assert!(!out.contains(secret), "{secret} printed:\n{out}");
    }
    let parsed: toml::Table = out.parse().expect("the output is TOML");
    assert_eq!(parsed["resume_window_sec"].as_integer(), Some(30));
}

#[tokio::test]
async fn every_wrong_setting_is_refused_naming_its_source() {
    let cases = [
        ("unknown", "colour = \"blue\"\n", "key `colour`: no such setting"),
        (
            "bad-value",
            "listen = \"nowhere\"\n",
            "key `listen`: invalid value 'nowhere'",
        ),
        (
            "bad-type",
            "max_log_frames = { a = 1 }\n",
            "key `max_log_frames`: a table is not a value of this setting",
        ),
        (
            "bad-flag-value",
            "budget_exhaustion_fatal = \"maybe\"\n",
            "key `budget_exhaustion_fatal`: expected true or false",
        ),
        ("syntax", "listen = \n", "TOML parse error"),
        (
            "bad-agents",
            "[[agents]]\nname = \"x\"\nversion = \"1.0.0\"\nbackend = \"builtin\"\nbuiltin = \"nope\"\n",
            "no built-in agent \"nope\"",
        ),
    ];
    for (name, text, expected) in cases {
        let file = config_file(name, text);
        let (code, out, err) = check(&file, &[], &[]).await;
        assert_eq!(code, 2, "{name}: {out}{err}");
        assert!(err.contains(expected), "{name}: {expected:?} in {err}");
        if name != "bad-agents" {
            assert!(
                err.contains(&format!("config file {}", file.display())),
                "{name}: the file is named: {err}"
            );
        }
    }
    let file = config_file("env", "");
    let (code, _, err) = check(&file, &[], &[("ARCP_MAX_LOG_FRAMES", "many")]).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("environment variable ARCP_MAX_LOG_FRAMES: invalid value 'many'"),
        "{err}"
    );
    // A flag over the variable: the variable is not used, so it is not an error.
    let (code, out, err) = check(
        &file,
        &["--max-log-frames", "5"],
        &[("ARCP_MAX_LOG_FRAMES", "many")],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("max_log_frames = 5  # flag"), "{out}");
    let (code, _, err) = check(&scratch("missing").join("none.toml"), &[], &[]).await;
    assert_eq!(code, 2);
    assert!(err.contains("cannot read config file"), "{err}");
}

#[tokio::test]
async fn serve_runs_with_the_config_file_and_its_agents() {
    let file = config_file(
        "serve",
        "resume_window_sec = 42\nbuiltins = false\n\
         [[agents]]\nname = \"repeat\"\nversion = \"2.0.0\"\nbackend = \"builtin\"\nbuiltin = \"echo\"\n",
    );
    let path = file.to_str().expect("a UTF-8 path");
    let process = GatewayProcess::start_with("info", None, &["--config", path]).await;
    let (_, welcomed) = process.endpoint().hello(GATEWAY_TOKEN).await;
    assert_eq!(welcome(&welcomed).resume_window_sec, 42);
    let agents: Vec<_> = inventory(&welcomed).into_iter().map(|a| a.0).collect();
    assert_eq!(agents, ["repeat"]);
    process.terminate().await;
    // A flag comes before the file.
    let process = GatewayProcess::start_with(
        "info",
        None,
        &["--config", path, "--resume-window-sec", "43"],
    )
    .await;
    let (_, welcomed) = process.endpoint().hello(GATEWAY_TOKEN).await;
    assert_eq!(welcome(&welcomed).resume_window_sec, 43);
    process.terminate().await;
}
