//! Opening a session (§6.1, §6.2), session-control frames (§6.4, §6.7), the error taxonomy on
//! the session level (§12), and the gRPC surface around the ARCP service (health, reflection,
//! graceful stop), all through the real server.

mod common;

use std::time::Duration;

use arcp_gateway::{
    config::GatewayConfig,
    proto::{self, client_frame::Payload as In, server_frame::Payload as Out, ClientFrame},
    ErrorCode,
};
use common::*;
use tokio_stream::StreamExt;
use tonic_reflection::pb::v1 as reflection;

/// [`expect_error`] for the refusals here, which are all final: none of them is retryable.
fn expect_final_error(frame: &proto::ServerFrame, code: ErrorCode, request_id: &str) {
    let e = expect_error(frame, code, Some(request_id));
    assert!(!e.retryable, "{} is not retryable", e.code);
}

/// Asserts the stream ended cleanly: no more frames, no error status.
async fn expect_end(conn: &mut Conn) {
    match conn.try_recv().await {
        Ok(None) => {}
        other => panic!("expected the stream to end cleanly, got {other:?}"),
    }
}

/// A hello whose `auth` is absent altogether.
fn hello_without_auth(features: &[&str]) -> In {
    match hello("", features, None) {
        In::SessionHello(h) => In::SessionHello(proto::SessionHello { auth: None, ..h }),
        _ => unreachable!(),
    }
}

/// Opens a stream and sends `first`; returns the stream, the first frame's id, and the answer.
async fn first_frame(server: &TestServer, first: In) -> (Conn, String, proto::ServerFrame) {
    let mut conn = server.open().await;
    let id = conn.send(first).await;
    let answer = conn.recv().await;
    (conn, id, answer)
}

/// Proves the session still works: an echo job runs to its result. Returns the result frame.
async fn echo_completes(conn: &mut Conn) -> proto::ServerFrame {
    let input = serde_json::json!({"still": "alive"});
    let (job, _) = submit_and_accept(conn, submit("echo", input.clone())).await;
    let (before, terminal) = conn.recv_until_terminal(&job).await;
    assert!(before.is_empty(), "echo emits no events: {before:?}");
    let r = job_result(&terminal);
    assert_eq!(r.final_status, "success");
    assert_eq!(to_json(r.result.as_ref().unwrap()), input);
    terminal
}

// ---------------------------------------------------------------------------------------------
// The welcome
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_welcome_describes_the_session_and_the_runtime() {
    let server = TestServer::start_default().await;
    let (_conn, frame) = server.hello("alice-token").await;

    assert!(
        frame.session_id.starts_with("sess_"),
        "session id {:?}",
        frame.session_id
    );
    assert!(frame.session_id.len() > "sess_".len());
    assert_eq!(frame.arcp, "1.1");
    assert!(!frame.id.is_empty(), "every frame has an id");
    assert_eq!(frame.event_seq, 0, "the welcome is a control frame");
    assert!(frame.job_id.is_empty());

    let w = welcome(&frame);
    assert!(!w.resume_token.is_empty());
    assert_eq!(w.resume_window_sec, 600);
    assert_eq!(w.heartbeat_interval_sec, 30);
    let runtime = w.runtime.as_ref().expect("runtime info");
    assert_eq!(runtime.name, "arcp-gateway");
    assert_eq!(runtime.version, env!("CARGO_PKG_VERSION"));

    let caps = w.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.encodings, vec!["protobuf".to_string()]);
    assert_eq!(caps.features, vec!["progress", "agent_versions"]);
    for name in ["echo", "ticker"] {
        let agent = caps
            .agents
            .iter()
            .find(|a| a.name == name)
            .unwrap_or_else(|| panic!("{name} missing from {:?}", caps.agents));
        assert_eq!(agent.versions, vec!["1.0.0".to_string()]);
        assert_eq!(agent.default, "1.0.0");
    }
}

#[tokio::test]
async fn every_session_gets_its_own_id_and_token() {
    let server = TestServer::start_default().await;
    let (_a, wa) = server.hello("alice-token").await;
    let (_b, wb) = server.hello("alice-token").await;
    assert_ne!(wa.session_id, wb.session_id);
    assert_ne!(welcome(&wa).resume_token, welcome(&wb).resume_token);
    assert_eq!(server.session_count(), 2);
}

#[tokio::test]
async fn effective_features_are_the_intersection_of_hello_and_runtime() {
    let server = TestServer::start_default().await;
    let features = |frame: &proto::ServerFrame| {
        welcome(frame)
            .capabilities
            .as_ref()
            .expect("capabilities")
            .features
            .clone()
    };

    let (_c, _, w) = first_frame(
        &server,
        hello("alice-token", &["progress", "heartbeat", "bogus"], None),
    )
    .await;
    assert_eq!(features(&w), vec!["heartbeat", "progress"]);

    let (_c, _, w) = first_frame(&server, hello("alice-token", &[], None)).await;
    assert!(features(&w).is_empty(), "{:?}", features(&w));

    let no_capabilities = match hello("alice-token", &[], None) {
        In::SessionHello(h) => In::SessionHello(proto::SessionHello {
            capabilities: None,
            ..h
        }),
        _ => unreachable!(),
    };
    let (_c, _, w) = first_frame(&server, no_capabilities).await;
    assert!(features(&w).is_empty(), "{:?}", features(&w));

    // The agent inventory does not depend on the features.
    let agents = &welcome(&w).capabilities.as_ref().unwrap().agents;
    assert!(agents.iter().any(|a| a.name == "echo"));
}

// ---------------------------------------------------------------------------------------------
// The first frame
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_first_frame_other_than_hello_is_refused_and_ends_the_stream() {
    let server = TestServer::start_default().await;
    for first in [
        submit("echo", serde_json::json!({"x": 1})),
        ping("p1"),
        cancel("job_x"),
        In::SessionClose(proto::SessionClose {
            reason: "bye".into(),
        }),
    ] {
        let (mut conn, id, answer) = first_frame(&server, first).await;
        expect_final_error(&answer, ErrorCode::InvalidRequest, &id);
        assert!(answer.session_id.is_empty(), "no session was opened");
        expect_end(&mut conn).await;
    }
    assert_eq!(server.session_count(), 0);
}

#[tokio::test]
async fn a_first_frame_without_payload_is_refused_with_its_id() {
    let server = TestServer::start_default().await;
    let mut conn = server.open().await;
    conn.send_frame(ClientFrame {
        id: "no-payload-1".into(),
        ..Default::default()
    })
    .await;
    let answer = conn.recv().await;
    expect_final_error(&answer, ErrorCode::InvalidRequest, "no-payload-1");
    expect_end(&mut conn).await;
    assert_eq!(server.session_count(), 0);
}

#[tokio::test]
async fn a_stream_closed_before_any_frame_just_ends() {
    let server = TestServer::start_default().await;
    let mut conn = server.open().await;
    conn.close_send();
    expect_end(&mut conn).await;
    assert_eq!(server.session_count(), 0);
}

#[tokio::test]
async fn a_stream_that_never_says_hello_is_refused_after_the_hello_timeout() {
    let config = GatewayConfig {
        hello_timeout: Duration::from_millis(200),
        ..GatewayConfig::default()
    };
    let server = TestServer::start(config, &[("alice-token", "alice")]).await;
    let mut conn = server.open().await;
    let answer = conn.recv().await;
    expect_final_error(&answer, ErrorCode::InvalidRequest, "");
    expect_end(&mut conn).await;
    assert_eq!(server.session_count(), 0);
}

// ---------------------------------------------------------------------------------------------
// Authentication (§6.1)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_hello_without_a_token_is_unauthenticated() {
    let server = TestServer::start_default().await;
    for first in [hello("", FEATURES, None), hello_without_auth(FEATURES)] {
        let (mut conn, id, answer) = first_frame(&server, first).await;
        expect_final_error(&answer, ErrorCode::Unauthenticated, &id);
        assert!(answer.session_id.is_empty());
        expect_end(&mut conn).await;
    }
    assert_eq!(server.session_count(), 0);
}

#[tokio::test]
async fn a_wrong_token_is_unauthenticated() {
    let server = TestServer::start_default().await;
    let (mut conn, id, answer) = first_frame(&server, hello("mallory-token", FEATURES, None)).await;
    expect_final_error(&answer, ErrorCode::Unauthenticated, &id);
    expect_end(&mut conn).await;
    assert_eq!(server.session_count(), 0);
}

#[tokio::test]
async fn open_mode_accepts_any_token_but_still_requires_one() {
    let server = TestServer::start(GatewayConfig::default(), &[]).await;
    let (mut conn, w) = server.hello("whatever-token").await;
    assert!(w.session_id.starts_with("sess_"));
    echo_completes(&mut conn).await;
    let (_other, w2) = server.hello("another-token").await;
    assert_ne!(w.session_id, w2.session_id);

    let (mut conn, id, answer) = first_frame(&server, hello("", FEATURES, None)).await;
    expect_final_error(&answer, ErrorCode::Unauthenticated, &id);
    expect_end(&mut conn).await;
}

#[tokio::test]
async fn a_bearer_in_metadata_authenticates_a_hello_without_a_token() {
    let server = TestServer::start_default().await;
    for first in [hello("", FEATURES, None), hello_without_auth(FEATURES)] {
        let mut conn = server
            .open_with(&[("authorization", "Bearer alice-token")])
            .await
            .expect("metadata accepted");
        conn.send(first).await;
        let w = conn.recv().await;
        assert!(welcome(&w).capabilities.is_some());
        assert!(w.session_id.starts_with("sess_"));
        echo_completes(&mut conn).await;
    }
}

#[tokio::test]
async fn metadata_and_hello_naming_the_same_principal_agree() {
    let server = TestServer::start_default().await;
    let mut conn = server
        .open_with(&[("authorization", "Bearer alice-token")])
        .await
        .expect("metadata accepted");
    conn.send(hello("alice-token", FEATURES, None)).await;
    welcome(&conn.recv().await);
}

#[tokio::test]
async fn a_bad_metadata_token_refuses_the_call_before_the_stream_opens() {
    let server = TestServer::start_default().await;
    for value in ["Bearer wrong-token", "Basic alice-token", "alice-token"] {
        let status = match server.open_with(&[("authorization", value)]).await {
            Err(status) => status,
            Ok(_) => panic!("{value:?}: the stream opened"),
        };
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        let md = |key: &str| {
            status
                .metadata()
                .get(key)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        assert_eq!(md("arcp-error-code").as_deref(), Some("UNAUTHENTICATED"));
        assert_eq!(md("arcp-retryable").as_deref(), Some("false"));
    }
    assert_eq!(server.session_count(), 0);
}

#[tokio::test]
async fn metadata_and_hello_naming_different_principals_are_unauthenticated() {
    let server = TestServer::start_default().await;
    let mut conn = server
        .open_with(&[("authorization", "Bearer alice-token")])
        .await
        .expect("metadata accepted");
    let id = conn.send(hello("bob-token", FEATURES, None)).await;
    let answer = conn.recv().await;
    expect_final_error(&answer, ErrorCode::Unauthenticated, &id);
    expect_end(&mut conn).await;

    // A hello token that is itself invalid is refused the same way.
    let mut conn = server
        .open_with(&[("authorization", "Bearer alice-token")])
        .await
        .expect("metadata accepted");
    let id = conn.send(hello("mallory-token", FEATURES, None)).await;
    expect_final_error(&conn.recv().await, ErrorCode::Unauthenticated, &id);
    assert_eq!(server.session_count(), 0);
}

// ---------------------------------------------------------------------------------------------
// An open session
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_frame_without_payload_after_the_welcome_is_refused_and_the_session_survives() {
    let server = TestServer::start_default().await;
    let (mut conn, w) = server.hello("alice-token").await;
    conn.send_frame(ClientFrame {
        id: "empty-7".into(),
        ..Default::default()
    })
    .await;
    let answer = conn.recv().await;
    expect_final_error(&answer, ErrorCode::InvalidRequest, "empty-7");
    assert_eq!(answer.session_id, w.session_id);
    let result = echo_completes(&mut conn).await;
    assert_eq!(result.event_seq, 2, "the refused frame used no event_seq");
}

#[tokio::test]
async fn a_second_hello_or_resume_is_refused_and_the_session_survives() {
    let server = TestServer::start_default().await;
    let (mut conn, w) = server.hello("alice-token").await;
    let token = welcome(&w).resume_token.clone();

    let id = conn.send(hello("alice-token", FEATURES, None)).await;
    expect_final_error(&conn.recv().await, ErrorCode::InvalidRequest, &id);

    let id = conn
        .send(In::SessionResume(proto::SessionResume {
            session_id: w.session_id.clone(),
            resume_token: token,
            auth: Some(proto::Auth {
                scheme: "bearer".into(),
                token: "alice-token".into(),
            }),
            ..Default::default()
        }))
        .await;
    expect_final_error(&conn.recv().await, ErrorCode::InvalidRequest, &id);

    echo_completes(&mut conn).await;
    assert_eq!(server.session_count(), 1, "no second session");
}

#[tokio::test]
async fn a_frame_naming_another_session_is_refused() {
    let server = TestServer::start_default().await;
    let (mut conn, w) = server.hello("alice-token").await;
    let (_other, other) = server.hello("alice-token").await;

    conn.send_frame(ClientFrame {
        id: "foreign-1".into(),
        session_id: other.session_id.clone(),
        payload: Some(submit("echo", serde_json::json!(1))),
        ..Default::default()
    })
    .await;
    let answer = conn.recv().await;
    expect_final_error(&answer, ErrorCode::InvalidRequest, "foreign-1");
    assert_eq!(answer.session_id, w.session_id);

    // Naming its own session is fine.
    conn.send_frame(ClientFrame {
        id: "own-1".into(),
        session_id: w.session_id.clone(),
        payload: Some(ping("own")),
        ..Default::default()
    })
    .await;
    let pong = conn.recv().await;
    match &pong.payload {
        Some(Out::SessionPong(p)) => assert_eq!(p.ping_nonce, "own"),
        other => panic!("expected session_pong, got {other:?}"),
    }
    let result = echo_completes(&mut conn).await;
    assert_eq!(result.event_seq, 2, "the refused submit ran no job");
}

#[tokio::test]
async fn a_ping_is_answered_with_a_pong_echoing_its_nonce() {
    let server = TestServer::start_default().await;
    let (mut conn, w) = server.hello("alice-token").await;
    // A pong from the client needs no answer: the next frame answers the ping.
    conn.send(In::SessionPong(proto::SessionPong {
        ping_nonce: "unsolicited".into(),
        received_at: "2026-05-13T19:42:13.020Z".into(),
    }))
    .await;
    for nonce in ["p_01", "p_02"] {
        conn.send(ping(nonce)).await;
        let frame = conn.recv().await;
        let pong = match &frame.payload {
            Some(Out::SessionPong(p)) => p,
            other => panic!("expected session_pong, got {other:?}"),
        };
        assert_eq!(pong.ping_nonce, nonce);
        assert!(pong.received_at.ends_with('Z'), "{:?}", pong.received_at);
        assert!(
            pong.received_at.contains('T'),
            "RFC 3339: {:?}",
            pong.received_at
        );
        assert_eq!(frame.event_seq, 0, "heartbeats are not in event_seq (§6.4)");
        assert_eq!(frame.session_id, w.session_id);
        assert!(frame.job_id.is_empty());
    }
}

#[tokio::test]
async fn features_the_client_did_not_negotiate_are_refused_and_the_session_survives() {
    let server = TestServer::start_default().await;
    let (mut conn, _) = server.hello("alice-token").await;
    for payload in [
        In::SessionAck(proto::SessionAck {
            last_processed_seq: 0,
        }),
        In::SessionListJobs(proto::SessionListJobs::default()),
        In::JobSubscribe(proto::JobSubscribe {
            job_id: "job_x".into(),
            ..Default::default()
        }),
        In::JobUnsubscribe(proto::JobUnsubscribe {
            job_id: "job_x".into(),
        }),
    ] {
        let id = conn.send(payload).await;
        expect_final_error(&conn.recv().await, ErrorCode::InvalidRequest, &id);
    }
    let result = echo_completes(&mut conn).await;
    assert_eq!(result.event_seq, 2);
}

#[tokio::test]
async fn session_close_is_acknowledged_then_the_stream_ends() {
    let server = TestServer::start_default().await;
    let (mut conn, w) = server.hello("alice-token").await;
    conn.send(In::SessionClose(proto::SessionClose {
        reason: "done for today".into(),
    }))
    .await;
    let frame = conn.recv().await;
    match &frame.payload {
        Some(Out::SessionClosed(c)) => assert_eq!(c.reason, "done for today"),
        other => panic!("expected session_closed, got {other:?}"),
    }
    assert_eq!(frame.event_seq, 0);
    assert_eq!(frame.session_id, w.session_id);
    expect_end(&mut conn).await;
}

// ---------------------------------------------------------------------------------------------
// The gRPC surface
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn health_reports_serving_without_credentials() {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    let server = TestServer::start_default().await;
    let mut health = HealthClient::new(server.channel().await);
    for service in ["", "arcp.v1.Arcp"] {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|s| panic!("health check of {service:?} failed: {s:?}"))
            .into_inner();
        assert_eq!(
            response.status(),
            ServingStatus::Serving,
            "service {service:?}"
        );
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope.v1.Nope".into(),
        })
        .await
        .expect_err("unknown services are not reported");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

/// Sends one server reflection request, without credentials, and returns the first answer.
async fn reflect(
    request: reflection::server_reflection_request::MessageRequest,
) -> Option<reflection::server_reflection_response::MessageResponse> {
    let server = TestServer::start_default().await;
    let mut client =
        reflection::server_reflection_client::ServerReflectionClient::new(server.channel().await);
    let request = reflection::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection answers without credentials")
        .into_inner();
    tokio::time::timeout(FRAME_TIMEOUT, responses.next())
        .await
        .expect("a reflection response")
        .expect("the stream yields a response")
        .expect("the response is not an error")
        .message_response
}

#[tokio::test]
async fn reflection_lists_the_services_without_credentials() {
    use reflection::{
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let names: Vec<String> = match reflect(MessageRequest::ListServices(String::new())).await {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("expected a service list, got {other:?}"),
    };
    assert!(names.iter().any(|n| n == "arcp.v1.Arcp"), "{names:?}");
    assert!(
        names.iter().any(|n| n == "grpc.health.v1.Health"),
        "{names:?}"
    );
}

/// What `grpcurl describe arcp.v1.ClientFrame` and `-d @ ... arcp.v1.Arcp/Session` ask for:
/// the file declaring a symbol, with the files it imports.
#[tokio::test]
async fn reflection_serves_the_schema_of_every_frame_type() {
    use prost::Message;
    use reflection::{
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let symbol = MessageRequest::FileContainingSymbol("arcp.v1.ClientFrame".into());
    let files = match reflect(symbol).await {
        Some(MessageResponse::FileDescriptorResponse(files)) => files.file_descriptor_proto,
        other => panic!("expected file descriptors, got {other:?}"),
    };
    let files: Vec<prost_types::FileDescriptorProto> = files
        .iter()
        .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).unwrap())
        .collect();
    let arcp = files
        .iter()
        .find(|f| f.package() == "arcp.v1")
        .expect("the arcp.v1 file");
    let messages: Vec<&str> = arcp.message_type.iter().map(|m| m.name()).collect();
    for name in [
        "ClientFrame",
        "ServerFrame",
        "SessionHello",
        "JobSubmit",
        "JobEvent",
    ] {
        assert!(messages.contains(&name), "{name} in {messages:?}");
    }
    assert_eq!(arcp.service[0].name(), "Arcp");
    assert!(
        arcp.dependency
            .iter()
            .any(|d| d == "google/protobuf/struct.proto"),
        "{:?}",
        arcp.dependency
    );
}

#[tokio::test]
async fn a_graceful_stop_ends_attached_streams_with_unavailable() {
    let server = TestServer::start_default().await;
    let (mut conn, _) = server.hello("alice-token").await;
    let (mut conn2, _) = server.hello("bob-token").await;
    let (job, _) = submit_and_accept(&mut conn2, ticker(1000, 20)).await;

    let ((), first, second) = tokio::join!(server.stop(), conn.try_recv(), async {
        loop {
            match conn2.try_recv().await {
                Ok(Some(f)) => assert_eq!(f.job_id, job, "only the ticker's frames"),
                other => return other,
            }
        }
    });
    for ended in [first, second] {
        let status = ended.expect_err("the stream ends with a status");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    }
}

/// The server documents that on shutdown "every ARCP stream ends with UNAVAILABLE". A stream
/// still waiting for its hello must too, rather than holding the shutdown until the hello
/// timeout (set short here only so a failure shows which frame arrived instead of a hang).
#[tokio::test]
async fn a_graceful_stop_also_ends_streams_that_have_not_said_hello() {
    let config = GatewayConfig {
        hello_timeout: Duration::from_secs(5),
        ..GatewayConfig::default()
    };
    let server = TestServer::start(config, &[("alice-token", "alice")]).await;
    let mut idle = server.open().await;
    let ((), ended) = tokio::join!(server.stop(), idle.try_recv());
    let status = ended.expect_err("the stream ends with a status");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

#[tokio::test]
async fn an_unknown_method_of_the_arcp_service_is_unimplemented() {
    let server = TestServer::start_default().await;
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.expect("the channel connects");
    let codec = tonic_prost::ProstCodec::<ClientFrame, proto::ServerFrame>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/arcp.v1.Arcp/Nope");
    let status = grpc
        .unary(tonic::Request::new(ClientFrame::default()), path, codec)
        .await
        .expect_err("there is no such method");
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
    assert!(
        status.message().contains("/arcp.v1.Arcp/Nope"),
        "{status:?}"
    );
}
