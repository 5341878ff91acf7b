//! [`HttpProvisioner`]: an upstream reached over HTTP or HTTPS (`serve --credential-upstream
//! URL`), a service of its own that outlives any gateway process, so a credential it issued is
//! still there to revoke after the process that asked for it died. `docs/credentials.md` is
//! the contract:
//!
//! - `POST {URL}/credentials` with `{"job_id", "constraints"}` answers `200` or `201` with the
//!   credential (`id`, `value`, `endpoint`, and optionally `scheme`, `profile`, `constraints`).
//! - `POST {URL}/credentials/{id}/rotate` answers `200` with the credential, same id, new value.
//! - `DELETE {URL}/credentials/{id}` answers `2xx`, or `404` for one already revoked: both are
//!   success. Anything else, or no answer, is a failure the runtime retries.
//!
//! Each call is one HTTP/1.1 exchange on a connection of its own (a credential is issued and
//! revoked once per job, rotated rarely), bounded by [`REQUEST_TIMEOUT`]. Neither a
//! credential's value nor an answer's body ever reaches an error message or a log.

use std::time::Duration;

use ::http::{header, Method, Request, StatusCode, Uri};
use async_trait::async_trait;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;

use crate::{
    error::ArcpError,
    ids::JobId,
    protocol::{credential::Credential, Json},
    transport::tls_client,
};

use super::provisioner::CredentialProvisioner;

/// How long one call to the upstream may take, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest answer read from the upstream; a credential is a few hundred bytes.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An upstream at an `http://` or `https://` base URL.
pub struct HttpProvisioner {
    host: String,
    port: u16,
    /// `host:port`, as the `Host` header names it.
    authority: String,
    /// The URL's path, without a trailing `/`; the calls' paths follow it.
    base_path: String,
    /// For `https://`.
    tls: Option<Tls>,
    /// Sent as `Authorization: Bearer`, if the upstream wants one.
    token: Option<String>,
}

struct Tls {
    connector: tokio_rustls::TlsConnector,
    name: rustls::pki_types::ServerName<'static>,
}

/// A credential as the upstream answers it.
#[derive(Deserialize)]
struct Answered {
    id: String,
    #[serde(default = "bearer")]
    scheme: String,
    value: String,
    endpoint: String,
    #[serde(default)]
    profile: Option<String>,
    /// What the upstream enforces; none claimed if absent (§9.8.3).
    #[serde(default)]
    constraints: serde_json::Map<String, Json>,
}

fn bearer() -> String {
    "bearer".into()
}

impl HttpProvisioner {
    /// The upstream at `url` (`http://HOST[:PORT][/PATH]` or `https://...`, trusting the
    /// system's root certificates), sending `token` as a bearer token if given.
    pub fn new(url: &str, token: Option<String>) -> Result<Self, ArcpError> {
        let bad =
            |why: &str| ArcpError::InvalidRequest(format!("credential upstream {url:?}: {why}"));
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad("expected http:// or https://")),
        };
        if uri.query().is_some() {
            return Err(bad("a query has no place in the base URL"));
        }
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        // An IPv6 literal comes bracketed, as a URL writes it; a socket wants it bare.
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            Some(Tls {
                connector: tls_connector()?,
                name: rustls::pki_types::ServerName::try_from(bare.clone())
                    .map_err(|_| bad("the host is not a valid TLS server name"))?,
            })
        } else {
            None
        };
        Ok(HttpProvisioner {
            authority: format!("{host}:{port}"),
            host: bare,
            port,
            base_path: uri.path().trim_end_matches('/').to_owned(),
            tls,
            token,
        })
    }

    /// Sends `method path` with `body`, answering the status and the body.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Json>,
    ) -> Result<(StatusCode, Bytes), ArcpError> {
        let what = format!("{method} {path}");
        let unavailable = |why: String| {
            ArcpError::Internal(format!(
                "the credential upstream is unavailable ({what}): {why}"
            ))
        };
        let request = self
            .request(method, path, body)
            .map_err(|e| unavailable(e.to_string()))?;
        match tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(request)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(unavailable(e.to_string())),
            Err(_) => Err(unavailable(format!(
                "no answer within {}s",
                REQUEST_TIMEOUT.as_secs()
            ))),
        }
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Json>,
    ) -> Result<Request<Full<Bytes>>, ::http::Error> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base_path))
            .header(header::HOST, &self.authority)
            .header(header::ACCEPT, "application/json");
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some(body) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(body.to_string())
            }
            None => Bytes::new(),
        };
        request.body(Full::new(body))
    }

    async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), BoxError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        // One small request and its answer: nothing to gain from Nagle's delay.
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => send(TokioIo::new(tcp), request).await,
            Some(tls) => {
                let stream = tls.connector.connect(tls.name.clone(), tcp).await?;
                send(TokioIo::new(stream), request).await
            }
        }
    }

    /// The credential in the `200` (or, for an issue, `201`) answer to `method path`.
    async fn credential(
        &self,
        method: Method,
        path: &str,
        body: Option<Json>,
    ) -> Result<Credential, ArcpError> {
        let what = format!("{method} {path}");
        let (status, answer) = self.call(method, path, body).await?;
        if status != StatusCode::OK && status != StatusCode::CREATED {
            return Err(refused(&what, status));
        }
        // Not the parser's message: it may quote the value.
        let answered: Answered = serde_json::from_slice(&answer).map_err(|_| {
            ArcpError::Internal(format!(
                "the credential upstream answered {what} with something other than a credential"
            ))
        })?;
        if answered.id.is_empty() || answered.value.is_empty() {
            return Err(ArcpError::Internal(format!(
                "the credential upstream answered {what} with a credential without an id or value"
            )));
        }
        Ok(Credential {
            id: answered.id,
            scheme: answered.scheme,
            value: answered.value,
            endpoint: answered.endpoint,
            profile: answered.profile,
            constraints: answered.constraints,
        })
    }
}

/// One exchange on the connection `io`.
async fn send<T>(io: T, request: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), BoxError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    // Drives the connection; it ends once the sender is dropped with nothing in flight.
    tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await?
        .to_bytes();
    Ok((status, body))
}

/// A TLS client trusting the system's root certificates.
fn tls_connector() -> Result<tokio_rustls::TlsConnector, ArcpError> {
    tls_client::config(None)
        .map(tokio_rustls::TlsConnector::from)
        .map_err(|e| ArcpError::InvalidRequest(format!("an https:// credential upstream: {e}")))
}

/// The error for an answer `status` to `what` that is not success.
fn refused(what: &str, status: StatusCode) -> ArcpError {
    ArcpError::Internal(format!(
        "the credential upstream answered {} to {what}",
        status.as_u16()
    ))
}

/// `id` as one path segment: every byte but the unreserved ones percent-encoded.
fn segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[async_trait]
impl CredentialProvisioner for HttpProvisioner {
    async fn issue(
        &self,
        job: &JobId,
        constraints: serde_json::Map<String, Json>,
    ) -> Result<Credential, ArcpError> {
        let body = serde_json::json!({ "job_id": job.as_str(), "constraints": constraints });
        self.credential(Method::POST, "/credentials", Some(body))
            .await
    }

    async fn rotate(&self, id: &str) -> Result<Credential, ArcpError> {
        let path = format!("/credentials/{}/rotate", segment(id));
        self.credential(Method::POST, &path, None).await
    }

    async fn revoke(&self, id: &str) -> Result<(), ArcpError> {
        let path = format!("/credentials/{}", segment(id));
        let (status, _) = self.call(Method::DELETE, &path, None).await?;
        if status.is_success() || status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(refused(&format!("DELETE {path}"), status))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_one_path_segment() {
        assert_eq!(segment("cred_0a-Z.~"), "cred_0a-Z.~");
        assert_eq!(segment("a/b c?%"), "a%2Fb%20c%3F%25");
    }

    #[test]
    fn the_base_url_is_checked() {
        let upstream = HttpProvisioner::new("http://127.0.0.1:8080/api/", None).unwrap();
        assert_eq!(
            (
                upstream.host.as_str(),
                upstream.port,
                upstream.base_path.as_str()
            ),
            ("127.0.0.1", 8080, "/api")
        );
        assert_eq!(upstream.authority, "127.0.0.1:8080");
        let bare = HttpProvisioner::new("http://[::1]", None).unwrap();
        assert_eq!((bare.host.as_str(), bare.port), ("::1", 80));
        for bad in ["ftp://host", "host:80", "http://host/?q=1"] {
            assert!(HttpProvisioner::new(bad, None).is_err(), "{bad}");
        }
    }
}
