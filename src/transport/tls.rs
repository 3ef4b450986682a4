//! TLS for TCP endpoints (feature `tls`): rustls on the `ring` provider.
//!
//! Certificate verification is always on: this module has no switch to
//! turn it off (a rustls configuration of your own, given to
//! [`TlsConfig::from_rustls`], is taken as it is). Trust a private CA with
//! [`TlsConfig::root_certs_pem`] instead.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::error::{Error, Result};

/// How a [`Connector`](crate::Connector) speaks TLS: which roots it trusts,
/// an optional client certificate (mutual TLS) and an optional server name.
///
/// - Roots: Mozilla's (the `webpki-roots` crate, compiled in, so the same
///   on every machine and in minimal containers) unless custom roots are
///   given; custom roots *replace* them, so a connection to a server with a
///   private CA trusts that CA and nothing else.
/// - The server's certificate must be valid for the name dialled: the
///   endpoint's host (a DNS name, or an IP address checked against the
///   certificate's IP SANs), or [`TlsConfig::server_name`] when set.
/// - This type has no way to turn verification off ([`TlsConfig::from_rustls`]
///   takes whatever rustls configuration you build, verifier included).
///
/// The private key is never printed: `Debug` shows whether one is set.
///
/// ```
/// use redis_layers::{Connector, TlsConfig};
///
/// # fn run(ca_pem: &[u8]) -> Result<(), redis_layers::Error> {
/// let tls = TlsConfig::new().root_certs_pem(ca_pem)?;
/// let connector = Connector::new().tls(tls)?;
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct TlsConfig {
    roots: Vec<CertificateDer<'static>>,
    client_auth: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
    server_name: Option<String>,
    rustls: Option<Arc<ClientConfig>>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.rustls.is_some() {
            return f
                .debug_struct("TlsConfig")
                .field("rustls", &"<custom ClientConfig>")
                .field("server_name", &self.server_name)
                .finish();
        }
        let roots = if self.roots.is_empty() {
            "webpki-roots (Mozilla)".to_string()
        } else {
            format!("{} custom", self.roots.len())
        };
        f.debug_struct("TlsConfig")
            .field("roots", &roots)
            .field(
                "client_auth",
                &self
                    .client_auth
                    .as_ref()
                    .map(|(c, _)| format!("{} certificate(s), private key ***", c.len())),
            )
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl TlsConfig {
    /// Verification against Mozilla's roots, no client certificate, the
    /// server name taken from each endpoint's host.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts the certificates in `pem` (one or more `CERTIFICATE` blocks)
    /// instead of Mozilla's roots. May be called again to add more.
    ///
    /// Errors: [`Error::Config`] when `pem` holds no certificate or is
    /// malformed.
    pub fn root_certs_pem(mut self, pem: &[u8]) -> Result<Self> {
        let certs = certs_from_pem(pem, "root certificates")?;
        self.roots.extend(certs);
        Ok(self)
    }

    /// [`TlsConfig::root_certs_pem`] with the PEM read from a file.
    pub fn root_cert_file(self, path: impl AsRef<Path>) -> Result<Self> {
        let pem = read(path.as_ref(), "root certificate")?;
        self.root_certs_pem(&pem)
    }

    /// Presents this certificate chain (leaf first) and private key (PKCS#8,
    /// PKCS#1 or SEC1 PEM) to servers that ask for one (`tls-auth-clients`).
    ///
    /// Errors: [`Error::Config`] when either is missing or malformed (the
    /// message never quotes the key).
    pub fn client_auth_pem(mut self, cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<Self> {
        let chain = certs_from_pem(cert_chain_pem, "client certificate")?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
            Error::config(format!("TLS client private key: no usable PEM key ({e})"))
        })?;
        self.client_auth = Some((chain, Arc::new(key)));
        Ok(self)
    }

    /// [`TlsConfig::client_auth_pem`] with both read from files.
    pub fn client_auth_files(
        self,
        cert_chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self> {
        let chain = read(cert_chain.as_ref(), "client certificate")?;
        let key = read(key.as_ref(), "client private key")?;
        self.client_auth_pem(&chain, &key)
    }

    /// Verifies every server against this name (and sends it as SNI)
    /// instead of the host of the endpoint dialled. This applies to every
    /// endpoint the connector dials, handoff targets and cluster nodes
    /// included: leave it unset when they have names of their own.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Uses a rustls `ClientConfig` as it is, for settings this type does
    /// not offer (the roots, client certificate and verifier are then the
    /// config's own; [`TlsConfig::server_name`] still applies).
    pub fn from_rustls(config: Arc<ClientConfig>) -> Self {
        TlsConfig {
            rustls: Some(config),
            ..Self::default()
        }
    }

    /// Builds what a connector dials with: checks the roots and the client
    /// key now, so a bad one fails at configuration time.
    pub(crate) fn build(&self) -> Result<TlsConnector> {
        let config = match &self.rustls {
            Some(c) => c.clone(),
            None => Arc::new(self.client_config()?),
        };
        let server_name = self
            .server_name
            .as_deref()
            .map(|n| server_name(n).map_err(Error::config))
            .transpose()?;
        Ok(TlsConnector {
            inner: tokio_rustls::TlsConnector::from(config),
            server_name,
            debug: Arc::new(format!("{self:?}")),
        })
    }

    fn client_config(&self) -> Result<ClientConfig> {
        let mut roots = RootCertStore::empty();
        if self.roots.is_empty() {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        for cert in &self.roots {
            roots
                .add(cert.clone())
                .map_err(|e| Error::config(format!("TLS root certificate refused: {e}")))?;
        }
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| Error::config(format!("TLS: {e}")))?
                .with_root_certificates(roots);
        match &self.client_auth {
            None => Ok(builder.with_no_client_auth()),
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|e| Error::config(format!("TLS client certificate or key refused: {e}"))),
        }
    }
}

fn certs_from_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::config(format!("TLS {what}: malformed PEM ({e})")))?;
    if certs.is_empty() {
        return Err(Error::config(format!(
            "TLS {what}: no CERTIFICATE block in the PEM"
        )));
    }
    Ok(certs)
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::config(format!("TLS {what} file {}: {e}", path.display())))
}

fn server_name(name: &str) -> std::result::Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_owned())
        .map_err(|_| format!("{name:?} is not a valid TLS server name (DNS name or IP address)"))
}

/// A built [`TlsConfig`]: what a connector holds.
#[derive(Clone)]
pub(crate) struct TlsConnector {
    inner: tokio_rustls::TlsConnector,
    server_name: Option<ServerName<'static>>,
    /// The config's `Debug` text (no secrets in it), for the connector's.
    debug: Arc<String>,
}

impl fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.debug)
    }
}

impl TlsConnector {
    /// Runs the TLS handshake on `tcp` to `host`, verifying the server
    /// against `verify` (or the configured server name).
    pub(crate) async fn connect(
        &self,
        verify: &str,
        host: &str,
        port: u16,
        tcp: TcpStream,
    ) -> Result<TlsStream<TcpStream>> {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => server_name(verify).map_err(Error::config)?,
        };
        self.inner.connect(name.clone(), tcp).await.map_err(|e| {
            let kind = e.kind();
            let endpoint = super::Endpoint::tcp(host, port).to_string();
            let source: Box<dyn std::error::Error + Send + Sync> = match e.into_inner() {
                Some(inner) => inner,
                None => Box::new(io::Error::from(kind)),
            };
            io::Error::new(
                kind,
                TlsError {
                    endpoint,
                    server_name: name.to_str().into_owned(),
                    source,
                },
            )
            .into()
        })
    }
}

/// Why a TLS handshake failed: an unknown issuer, a certificate for another
/// name, an alert from the server, or the peer hanging up mid-handshake.
///
/// It arrives as the inner error of [`Error::Io`] (a failed handshake is a
/// failed connect, and so is retried, or not, like one: a bad certificate
/// has kind `InvalidData`, which [`Error::is_retryable_io`] does not retry;
/// a reset mid-handshake is retryable). [`Error::tls_error`] finds it.
///
/// ```
/// use redis_layers::Error;
///
/// fn explain(err: &Error) -> String {
///     match err.tls_error() {
///         Some(tls) => format!("TLS to {} failed: {}", tls.server_name(), tls),
///         None => err.to_string(),
///     }
/// }
/// # let _ = explain;
/// ```
#[derive(Debug)]
pub struct TlsError {
    endpoint: String,
    server_name: String,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl TlsError {
    /// The name the server was verified against.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// The rustls error (e.g. `InvalidCertificate(UnknownIssuer)`), when the
    /// failure is rustls' own rather than the socket's.
    pub fn rustls_error(&self) -> Option<&rustls::Error> {
        self.source.downcast_ref()
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TLS handshake with {} (server name {}) failed: {}",
            self.endpoint, self.server_name, self.source
        )
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

impl Error {
    /// The TLS handshake failure behind this error, if it is one (feature
    /// `tls`).
    ///
    /// ```
    /// assert!(redis_layers::Error::Closed.tls_error().is_none());
    /// ```
    pub fn tls_error(&self) -> Option<&TlsError> {
        match self {
            Error::Io(e) => e.get_ref()?.downcast_ref(),
            _ => None,
        }
    }
}
