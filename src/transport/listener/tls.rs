//! TLS on the listeners: the server's certificate and key (and, for mutual TLS, the CA that
//! signs client certificates) loaded from PEM files, reloaded when they change, and the
//! handshake each accepted connection makes before it is served.
//!
//! Rotation swaps the whole rustls configuration: a connection takes the one current when it
//! is accepted and keeps it, so established connections and their streams are not disturbed,
//! and new connections get the new certificate. A replacement that does not load (a key that
//! does not parse or does not match the certificate, a half-written file) is refused with an
//! error in the log, once per distinct content, and the configuration in use is kept.
//!
//! With a client CA, every connection must present a certificate it signed and that is valid
//! now; [`ClientPrincipal`] says which of its names, if any, is the connection's principal.

use std::{path::PathBuf, sync::Arc, time::Duration};

use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::{danger::ClientCertVerifier, WebPkiClientVerifier},
    RootCertStore, ServerConfig,
};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

use crate::{
    ids::Principal,
    reload::{self, Reloaded},
};

/// How often the files are looked at for a change, unless the settings say otherwise.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// Which name of a client certificate is the connection's principal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientPrincipal {
    /// None: the certificate only admits the connection; a bearer token names the principal.
    #[default]
    None,
    /// The subject's common name (CN).
    CommonName,
    /// The first DNS name among the subject alternative names.
    SanDns,
    /// The first URI among the subject alternative names (a SPIFFE id, say).
    SanUri,
    /// The first e-mail address among the subject alternative names.
    SanEmail,
}

impl std::str::FromStr for ClientPrincipal {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(ClientPrincipal::None),
            "cn" => Ok(ClientPrincipal::CommonName),
            "san-dns" => Ok(ClientPrincipal::SanDns),
            "san-uri" => Ok(ClientPrincipal::SanUri),
            "san-email" => Ok(ClientPrincipal::SanEmail),
            _ => Err("expected none, cn, san-dns, san-uri or san-email".into()),
        }
    }
}

impl ClientPrincipal {
    /// The principal `certificate` (DER) names, if this mode takes one and it has the name.
    pub fn of(self, certificate: &[u8]) -> Option<Principal> {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        if self == ClientPrincipal::None {
            return None;
        }
        let (_, cert) = X509Certificate::from_der(certificate).ok()?;
        let name = match self {
            ClientPrincipal::None => None,
            ClientPrincipal::CommonName => cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_owned),
            san => cert
                .subject_alternative_name()
                .ok()
                .flatten()
                .and_then(|ext| {
                    ext.value
                        .general_names
                        .iter()
                        .find_map(|name| match (san, name) {
                            (ClientPrincipal::SanDns, GeneralName::DNSName(n))
                            | (ClientPrincipal::SanUri, GeneralName::URI(n))
                            | (ClientPrincipal::SanEmail, GeneralName::RFC822Name(n)) => {
                                Some((*n).to_owned())
                            }
                            _ => None,
                        })
                }),
        };
        name.filter(|n| !n.is_empty()).map(Principal::new)
    }
}

/// Where the TLS material is, and how it is used.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    /// The server's certificate chain, PEM, leaf first.
    pub cert: PathBuf,
    /// The server's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CAs that sign client certificates, PEM; with it a client certificate is required.
    pub client_ca: Option<PathBuf>,
    /// Which name of a client certificate is the principal.
    pub client_principal: ClientPrincipal,
    /// How often the files are looked at for a change.
    pub reload_interval: Duration,
}

impl TlsSettings {
    /// `cert` and `key`, no client certificates, the default reload interval.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> TlsSettings {
        TlsSettings {
            cert: cert.into(),
            key: key.into(),
            client_ca: None,
            client_principal: ClientPrincipal::None,
            reload_interval: DEFAULT_RELOAD_INTERVAL,
        }
    }
}

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file holds no usable PEM of the kind expected.
    #[error("{path}: {what}")]
    Pem { path: PathBuf, what: String },
    /// rustls refused the material (a key that does not match the certificate, say).
    #[error("{0}")]
    Rustls(String),
}

/// The protocol a listener speaks, offered by ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Alpn {
    /// gRPC: `h2`.
    H2,
    /// WebSocket: `http/1.1`.
    Http11,
}

/// One loaded configuration for each listener.
struct Configs {
    grpc: Arc<ServerConfig>,
    websocket: Arc<ServerConfig>,
}

/// The TLS configuration the listeners use, reloaded when its files change.
pub struct Tls {
    settings: TlsSettings,
    current: Reloaded<Configs>,
}

impl Tls {
    /// Loads the material `settings` names; fails if it does not load.
    pub fn load(settings: TlsSettings) -> Result<Arc<Tls>, TlsError> {
        let files = Files::read(&settings)?;
        let configs = files.configs(&settings)?;
        Ok(Arc::new(Tls {
            current: Reloaded::new(configs, files.digest()),
            settings,
        }))
    }

    /// The settings it was loaded with.
    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// Whether client certificates are required.
    pub fn requires_client_certificates(&self) -> bool {
        self.settings.client_ca.is_some()
    }

    /// Reads the files again and, if they changed, switches to them; `Ok(true)` when it did.
    /// A change that does not load is an error and leaves the configuration in use.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let files = Files::read(&self.settings)?;
        self.current
            .offer(files.digest(), || files.configs(&self.settings))
    }

    /// Looks at the files every [`TlsSettings::reload_interval`] for as long as `tls` is
    /// held elsewhere, logging each change and each refused one.
    pub fn watch(tls: &Arc<Tls>) -> tokio::task::JoinHandle<()> {
        reload::watch(
            tls,
            tls.settings.reload_interval,
            "the TLS material",
            |tls| &tls.current,
            Tls::reload,
            |tls| {
                tracing::info!(
                    cert = %tls.settings.cert.display(),
                    "TLS certificate reloaded; new connections use it"
                )
            },
        )
    }

    /// An acceptor with the configuration current now, for one connection.
    pub(crate) fn acceptor(&self, alpn: Alpn) -> TlsAcceptor {
        let configs = self.current.current();
        TlsAcceptor::from(match alpn {
            Alpn::H2 => configs.grpc.clone(),
            Alpn::Http11 => configs.websocket.clone(),
        })
    }
}

/// The files' contents.
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Files {
    fn read(settings: &TlsSettings) -> Result<Files, TlsError> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.clone(),
                source,
            })
        };
        Ok(Files {
            cert: read(&settings.cert)?,
            key: read(&settings.key)?,
            client_ca: settings.client_ca.as_ref().map(read).transpose()?,
        })
    }

    fn digest(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        for part in [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
        {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        hash.finalize().into()
    }

    fn configs(&self, settings: &TlsSettings) -> Result<Configs, TlsError> {
        let pem = |path: &PathBuf, what: &str| TlsError::Pem {
            path: path.clone(),
            what: what.to_owned(),
        };
        let certs = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem(&settings.cert, &format!("certificate: {e}")))?;
        if certs.is_empty() {
            return Err(pem(&settings.cert, "no CERTIFICATE in the file"));
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key)
            .map_err(|e| pem(&settings.key, &format!("private key: {e}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ClientCertVerifier> = match (&self.client_ca, &settings.client_ca) {
            (Some(ca), Some(path)) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca) {
                    let cert = cert.map_err(|e| pem(path, &format!("CA certificate: {e}")))?;
                    roots
                        .add(cert)
                        .map_err(|e| pem(path, &format!("CA certificate: {e}")))?;
                }
                if roots.is_empty() {
                    return Err(pem(path, "no CERTIFICATE in the file"));
                }
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| TlsError::Rustls(e.to_string()))?
            }
            _ => WebPkiClientVerifier::no_client_auth(),
        };
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Rustls(format!("certificate and key: {e}")))?;
        let with_alpn = |alpn: &[u8]| {
            let mut config = config.clone();
            config.alpn_protocols = vec![alpn.to_vec()];
            Arc::new(config)
        };
        Ok(Configs {
            grpc: with_alpn(b"h2"),
            websocket: with_alpn(b"http/1.1"),
        })
    }
}
