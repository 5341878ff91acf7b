//! TLS for the tests: a certificate authority made in the test ([`Pki`]), the server's and
//! clients' certificates it signs, their files on disk, and TLS clients of both transports.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use arcp_gateway::transport::tls::TlsSettings;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tokio::net::TcpStream;
use tokio_rustls::{
    client::TlsStream,
    rustls::{
        self,
        pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName},
        ClientConfig, RootCertStore,
    },
    TlsConnector,
};
use tokio_tungstenite::{tungstenite::client::IntoClientRequest, MaybeTlsStream};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use super::{Conn, WsConn, FRAME_TIMEOUT};

/// The name the server's certificates carry, and the clients ask for.
pub const SERVER_NAME: &str = "localhost";

/// A certificate and its key, in PEM.
#[derive(Clone)]
pub struct CertPair {
    pub cert: String,
    pub key: String,
}

/// How a client certificate is made.
#[derive(Clone, Copy, Default)]
pub struct ClientCert<'a> {
    /// The subject's common name.
    pub cn: &'a str,
    /// A DNS name among the subject alternative names.
    pub dns: Option<&'a str>,
    /// A URI among the subject alternative names.
    pub uri: Option<&'a str>,
    /// Valid only in 2000: expired now.
    pub expired: bool,
}

/// A certificate authority of the test's own, and a directory for the files it writes.
pub struct Pki {
    issuer: Issuer<'static, KeyPair>,
    /// The CA's certificate, PEM: what clients trust, and the server's `--tls-client-ca`.
    pub ca: String,
    dir: ScratchDir,
}

/// A directory of the test's own under the system's temporary one, removed when dropped.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// A fresh, empty directory.
    pub fn new(what: &str) -> ScratchDir {
        use rand::Rng;
        let dir = std::env::temp_dir().join(format!(
            "arcp-{what}-{}-{:016x}",
            std::process::id(),
            rand::rng().random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        ScratchDir(dir)
    }

    /// A path in it.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Pki {
    /// A new CA named `name`, its files under a fresh directory.
    pub fn new(name: &str) -> Pki {
        let key = KeyPair::generate().expect("a CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = params.self_signed(&key).expect("a CA certificate").pem();
        Pki {
            issuer: Issuer::new(params, key),
            ca,
            dir: ScratchDir::new("tls"),
        }
    }

    /// A server certificate for [`SERVER_NAME`] and 127.0.0.1, whose subject is `cn` (so a
    /// test can tell two apart).
    pub fn server(&self, cn: &str) -> CertPair {
        let key = KeyPair::generate().expect("a server key");
        let mut params =
            CertificateParams::new(vec![SERVER_NAME.to_owned()]).expect("server params");
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        CertPair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A client certificate as `how` says.
    pub fn client(&self, how: ClientCert<'_>) -> CertPair {
        let key = KeyPair::generate().expect("a client key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.distinguished_name.push(DnType::CommonName, how.cn);
        if let Some(dns) = how.dns {
            params
                .subject_alt_names
                .push(SanType::DnsName(dns.try_into().expect("a DNS name")));
        }
        if let Some(uri) = how.uri {
            params
                .subject_alt_names
                .push(SanType::URI(uri.try_into().expect("a URI")));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if how.expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2000, 12, 31);
        }
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        CertPair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A path in this CA's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path(name)
    }

    /// Writes `pair` as `server.crt` and `server.key` and returns settings naming them, that
    /// look for a change every 20 ms.
    pub fn server_settings(&self, pair: &CertPair) -> TlsSettings {
        write_pair(&self.path("server.crt"), &self.path("server.key"), pair);
        let mut settings = TlsSettings::new(self.path("server.crt"), self.path("server.key"));
        settings.reload_interval = std::time::Duration::from_millis(20);
        settings
    }

    /// [`Pki::server_settings`] with client certificates required, signed by this CA.
    pub fn mutual_settings(&self, pair: &CertPair) -> TlsSettings {
        let mut settings = self.server_settings(pair);
        std::fs::write(self.path("client-ca.crt"), &self.ca).expect("write the client CA");
        settings.client_ca = Some(self.path("client-ca.crt"));
        settings
    }
}

/// Writes a certificate and key the way a rotation does: each to a file beside it, renamed
/// over the old one, so a reader sees the old or the new file, never half of one.
pub fn write_pair(cert: &Path, key: &Path, pair: &CertPair) {
    for (path, pem) in [(key, &pair.key), (cert, &pair.cert)] {
        let fresh = path.with_extension("new");
        std::fs::write(&fresh, pem).expect("write TLS file");
        std::fs::rename(&fresh, path).expect("rename TLS file");
    }
}

/// A rustls client trusting `ca`, presenting `identity` if given, offering `alpn`.
pub fn client_config(ca: &str, identity: Option<&CertPair>, alpn: &[&[u8]]) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("a root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(pair) => {
            let chain = CertificateDer::pem_slice_iter(pair.cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("client cert PEM");
            let key = PrivateKeyDer::from_pem_slice(pair.key.as_bytes()).expect("client key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// A TLS connection to `addr` with `config`, its handshake done.
pub async fn tls_connect(
    addr: SocketAddr,
    config: ClientConfig,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(SERVER_NAME).expect("a server name");
    tokio::time::timeout(
        FRAME_TIMEOUT,
        TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("the TLS handshake ends within the timeout")
}

/// The subject CN of the certificate the server presented on `stream`.
pub fn server_cn(stream: &TlsStream<TcpStream>) -> String {
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("the server presented a certificate");
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).expect("an X.509 certificate");
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .expect("a CN")
        .to_owned();
    cn
}

/// A gRPC channel over TLS to `addr`, trusting `ca`, presenting `identity` if given.
pub async fn tls_channel(
    addr: SocketAddr,
    ca: &str,
    identity: Option<&CertPair>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name(SERVER_NAME);
    if let Some(pair) = identity {
        tls = tls.identity(Identity::from_pem(&pair.cert, &pair.key));
    }
    Channel::from_shared(format!("https://{SERVER_NAME}:{}", addr.port()))
        .expect("uri")
        .tls_config(tls)?
        .connect()
        .await
}

/// A gRPC session stream over TLS with no metadata.
pub async fn tls_open(addr: SocketAddr, ca: &str, identity: Option<&CertPair>) -> Conn {
    let channel = tls_channel(addr, ca, identity).await.expect("TLS channel");
    super::open_on(channel, &[]).await.expect("stream opens")
}

/// A WebSocket over TLS (`wss://`) to `addr`'s `/arcp`, trusting `ca`, presenting `identity`
/// if given, with `Authorization: Bearer <token>` if `token` is given.
pub async fn wss(
    addr: SocketAddr,
    ca: &str,
    identity: Option<&CertPair>,
    token: Option<&str>,
) -> Result<WsConn, tokio_tungstenite::tungstenite::Error> {
    let tls = tls_connect(addr, client_config(ca, identity, &[b"http/1.1"])).await?;
    let mut request = format!("wss://{SERVER_NAME}:{}/arcp", addr.port())
        .into_client_request()
        .expect("a request");
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().expect("a header value");
        request.headers_mut().insert("authorization", value);
    }
    let upgrade = tokio_tungstenite::client_async(request, MaybeTlsStream::Rustls(tls));
    let (ws, _) = tokio::time::timeout(FRAME_TIMEOUT, upgrade)
        .await
        .expect("the upgrade is answered within the timeout")?;
    Ok(WsConn::from_socket(ws))
}
