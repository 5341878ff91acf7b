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
