//! `--store rediss://...`: a gateway process keeps its state in a Redis it reaches over TLS,
//! trusting the certificate authorities of the system (here `SSL_CERT_FILE`, a test CA).

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_keeps_its_sessions_in_a_redis_reached_over_tls() {
    let tls = TlsFiles::generate();
    let (_redis, url) = RedisServer::start_tls(&tls);
    let gateway = GatewayProcess::start_with_env(
        "info",
        None,
        &["--store", &url],
        &[("SSL_CERT_FILE", &tls.ca)],
    )
    .await;
    let endpoint = gateway.endpoint();
    let (mut conn, w) = endpoint.hello("alice-token").await;
    let (job, _) = submit_and_accept(&mut conn, ticker(3, 0)).await;
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(result_json(&terminal)["ticks"], 3);
    drop(conn);
    // The session is in Redis: it resumes, with every frame.
    let (mut conn, first) = endpoint
        .resume_with_hello(
            "alice-token",
            FEATURES,
            resume_info(&w.session_id, &welcome(&w).resume_token, 0),
        )
        .await;
    welcome(&first);
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(terminal.event_seq, 5);
}

/// A Redis whose certificate the gateway's authorities do not vouch for is not used: the
/// gateway does not serve on it, and says why while it tries again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_whose_certificate_is_not_trusted_is_not_used() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let tls = TlsFiles::generate();
    let (_redis, url) = RedisServer::start_tls(&tls);
    // No SSL_CERT_FILE: the system's authorities do not know the test CA.
    let mut child = command(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--ws-listen",
        "127.0.0.1:0",
        "--store",
        &url,
        "--replica-heartbeat-sec",
        "0.2",
    ])
    .env_remove("SSL_CERT_FILE")
    .spawn()
    .expect("spawn arcp-gateway");
    let stdout = child.stdout.take().expect("its stdout");
    let mut lines = BufReader::new(stdout).lines();
    let refused = tokio::time::timeout(PROCESS_TIMEOUT, async {
        while let Some(line) = lines.next_line().await.expect("its log") {
            assert!(
                !line.contains("listening"),
                "it serves on a Redis it does not trust: {line}"
            );
            if line.contains("could not register the replica") {
                return line;
            }
        }
        panic!("arcp-gateway exited without saying why it does not serve");
    })
    .await
    .expect("arcp-gateway says it cannot reach Redis");
    assert!(refused.contains("unavailable"), "{refused}");
    assert!(
        refused.to_lowercase().contains("certificate"),
        "the error names the certificate: {refused}"
    );
}
