//! A tower layer that authenticates an ARCP stream before it opens.
//!
//! For calls to the `arcp.v1.Arcp` service it checks the `authorization: Bearer` metadata
//! against the gateway's authenticator and, when the client sends `arcp-resume-token` (with
//! `arcp-last-event-seq`), validates the token against the same resume registry the session
//! code uses, and the sequence against the session's log. A failure answers the call with a
//! gRPC status (UNAUTHENTICATED, PERMISSION_DENIED, FAILED_PRECONDITION, INVALID_ARGUMENT)
//! carrying the §12 code in `arcp-error-code`, and no stream is opened. What it establishes
//! travels to the service as a [`ConnectInfo`] request extension, with what the connection's
//! TLS established (`Security`, set per connection by `InUseLayer`): whether it is
//! encrypted, and the principal its client certificate names, which must agree with the
//! bearer token's when both name one.
//!
//! A refused token (bearer or resume) counts against the peer and, for a resume token, the
//! principal; past the limit the refusal is sent late (`crate::auth::throttle`).
//!
//! Other services (health, reflection) pass through untouched, so probes need no credentials.

use std::{
    net::SocketAddr,
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::BoxFuture;
use http::{HeaderMap, Request, Response};
use tonic::transport::server::TcpConnectInfo;
use tower::{Layer, Service};

use crate::{
    auth::{
        bearer_from_header,
        throttle::{Check, Failure},
        transport_principal,
    },
    error::ArcpError,
    gateway::{ConnectInfo, Gateway},
    ids::EventSeq,
    metrics::transport::Transport,
    protocol::client::ResumeRequest,
    transport::listener::Security,
};

use super::{status, AUTHORIZATION, LAST_EVENT_SEQ, RESUME_TOKEN};

/// The path prefix of the calls this layer guards.
const GUARDED_PREFIX: &str = "/arcp.v1.Arcp/";

/// Authenticates ARCP calls against a [`Gateway`].
#[derive(Clone)]
pub struct AuthLayer {
    gateway: Arc<Gateway>,
}

impl AuthLayer {
    /// A layer authenticating against `gateway`'s authenticator and resume registry.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        AuthLayer { gateway }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticate {
            inner,
            gateway: self.gateway.clone(),
        }
    }
}

/// The service [`AuthLayer`] produces.
#[derive(Clone)]
pub struct Authenticate<S> {
    inner: S,
    gateway: Arc<Gateway>,
}

impl<S, B> Service<Request<B>> for Authenticate<S>
where
    S: Service<Request<B>, Response = Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // The clone is the service that was driven to readiness in `poll_ready`; keep it.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let gateway = self.gateway.clone();
        Box::pin(async move {
            if !request.uri().path().starts_with(GUARDED_PREFIX) {
                return inner.call(request).await;
            }
            let peer = request
                .extensions()
                .get::<TcpConnectInfo>()
                .and_then(TcpConnectInfo::remote_addr);
            let security = request
                .extensions()
                .get::<Security>()
                .cloned()
                .unwrap_or_default();
            match admit(&gateway, request.headers(), peer, security).await {
                Ok(conn) => {
                    request.extensions_mut().insert(conn);
                    inner.call(request).await
                }
                Err(error) => {
                    tracing::info!(code = %error.code(), "stream refused before opening: {}", error.message());
                    Ok(status::from_error(&error).into_http())
                }
            }
        })
    }
}

/// Checks the metadata of a call from `peer`, on a connection whose transport established
/// `security`; returns what they establish.
pub(crate) async fn admit(
    gateway: &Gateway,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    security: Security,
) -> Result<ConnectInfo, ArcpError> {
    let failure = |check, principal, error: &ArcpError| Failure {
        check,
        via: "grpc metadata",
        peer,
        principal,
        code: error.code(),
    };
    let principal = match header(headers, AUTHORIZATION)? {
        Some(value) => match gateway
            .authenticator()
            .authenticate(bearer_from_header(value)?)
        {
            Ok(principal) => Some(principal),
            Err(error) => {
                let failed = failure(Check::Bearer, None, &error);
                gateway.auth_throttle().failed(failed).await;
                return Err(error);
            }
        },
        None => None,
    };
    let principal = transport_principal(principal, security.principal)?;
    let resume = match header(headers, RESUME_TOKEN)? {
        None => None,
        Some(token) => {
            let principal = principal.as_ref().ok_or_else(|| {
                ArcpError::Unauthenticated(format!(
                    "{RESUME_TOKEN} metadata needs {AUTHORIZATION} metadata to bind it to a principal"
                ))
            })?;
            let last_event_seq = match header(headers, LAST_EVENT_SEQ)? {
                None => EventSeq::ZERO,
                Some(n) => EventSeq(n.trim().parse().map_err(|_| {
                    ArcpError::InvalidRequest(format!(
                        "{LAST_EVENT_SEQ} must be an unsigned integer"
                    ))
                })?),
            };
            let stores = gateway.stores();
            let session = match stores.resume.check(token, principal).await {
                Ok(session) => session,
                Err(error) => {
                    let failed = failure(Check::Resume, Some(principal), &error);
                    gateway.auth_throttle().failed(failed).await;
                    return Err(error);
                }
            };
            stores
                .logs
                .open(&session)
                .await?
                .bounds()
                .await?
                .check_resume_from(last_event_seq)?;
            Some(ResumeRequest {
                session_id: Some(session),
                token: token.to_owned(),
                last_event_seq,
            })
        }
    };
    Ok(ConnectInfo {
        principal,
        resume,
        peer,
        encrypted: security.encrypted,
        transport: Transport::Grpc,
        ..ConnectInfo::default()
    })
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ArcpError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str().map_err(|_| {
                ArcpError::InvalidRequest(format!("{name} metadata is not valid ASCII"))
            })
        })
        .transpose()
}
