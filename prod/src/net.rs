//! The network, made pluggable: the daemons use tokio's TCP, the simulation
//! plugs in turmoil's. Everything above this module is the same code.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::future::Future;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_util::either::Either;

/// Opens connections to one server.
pub trait Connector: Clone + Send + Sync + 'static {
    /// The connection type.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Opens a new connection.
    fn connect(&self) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

/// Connects over real TCP to `host:port`.
#[derive(Clone, Debug)]
pub struct TcpConnector {
    addr: String,
}

impl TcpConnector {
    /// A connector for `host:port`.
    pub fn new(addr: impl Into<String>) -> Self {
        Self { addr: addr.into() }
    }
}

impl Connector for TcpConnector {
    type Io = tokio::net::TcpStream;
    async fn connect(&self) -> io::Result<Self::Io> {
        let s = tokio::net::TcpStream::connect(&self.addr).await?;
        s.set_nodelay(true)?;
        Ok(s)
    }
}

/// The network a daemon runs on: it makes a [`Connector`] for any
/// `host:port`. The daemons use [`Tcp`]; the simulation its own network,
/// through the same builders.
pub trait Network: Clone + Send + Sync + 'static {
    /// The connectors it makes.
    type Connector: Connector;
    /// A connector to `addr` (`host:port`).
    fn connector(&self, addr: &str) -> Self::Connector;
}

/// The machine's own TCP.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tcp;

impl Network for Tcp {
    type Connector = TcpConnector;
    fn connector(&self, addr: &str) -> TcpConnector {
        TcpConnector::new(addr)
    }
}

/// Why an HTTP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// No connection could be opened: nothing was sent.
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    /// The exchange broke or timed out after it began: the request may or
    /// may not have been acted on.
    #[error("{0}")]
    Exchange(String),
}

/// Most idle connections kept for reuse.
const MAX_IDLE: usize = 64;

/// A small HTTP/1.1 client with keep-alive, over any [`Connector`].
pub struct HttpClient<C> {
    connector: C,
    authority: String,
    token: Option<String>,
    timeout: Duration,
    idle: Arc<Mutex<Vec<SendRequest<Full<Bytes>>>>>,
}

impl<C: Clone> Clone for HttpClient<C> {
    fn clone(&self) -> Self {
        Self {
            connector: self.connector.clone(),
            authority: self.authority.clone(),
            token: self.token.clone(),
            timeout: self.timeout,
            idle: self.idle.clone(),
        }
    }
}

impl<C: Connector> HttpClient<C> {
    /// A client for the server `connector` reaches, sending `authority` as
    /// the Host header and `token` as a bearer token.
    pub fn new(connector: C, authority: &str, token: Option<String>, timeout: Duration) -> Self {
        Self {
            connector,
            authority: authority.to_string(),
            token,
            timeout,
            idle: Arc::default(),
        }
    }

    async fn sender(&self) -> Result<SendRequest<Full<Bytes>>, HttpError> {
        loop {
            let reused = self.idle.lock().expect("idle lock").pop();
            match reused {
                Some(s) if !s.is_closed() => return Ok(s),
                Some(_) => continue,
                None => break,
            }
        }
        let io = self.connector.connect().await.map_err(HttpError::Connect)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| HttpError::Connect(io::Error::other(e)))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// One request; the answer's status, headers and body.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, hyper::HeaderMap, Bytes), HttpError> {
        let exchange = async {
            let mut sender = self.sender().await?;
            sender
                .ready()
                .await
                .map_err(|e| HttpError::Connect(io::Error::other(e)))?;
            let mut req = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::HOST, &self.authority);
            if let Some(t) = &self.token {
                req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
            }
            if body.is_some() {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
            }
            for (k, v) in headers {
                req = req.header(*k, v);
            }
            let req = req
                .body(Full::new(Bytes::from(body.unwrap_or_default())))
                .map_err(|e| HttpError::Exchange(e.to_string()))?;
            let response = sender
                .send_request(req)
                .await
                .map_err(|e| HttpError::Exchange(format!("request failed: {e}")))?;
            let (parts, body) = response.into_parts();
            let bytes = body
                .collect()
                .await
                .map_err(|e| HttpError::Exchange(format!("reading the answer failed: {e}")))?
                .to_bytes();
            let mut idle = self.idle.lock().expect("idle lock");
            if idle.len() < MAX_IDLE {
                idle.push(sender);
            }
            Ok((parts.status, parts.headers, bytes))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(HttpError::Exchange(format!(
                "no answer within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }
}

/// An `http://` or `https://` URL taken apart: where to connect, whether
/// to speak TLS, and what to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// `host:port`, for the connector.
    pub addr: String,
    /// The host alone (no brackets around an IPv6 address): the name a
    /// server certificate must be valid for.
    pub host: String,
    /// The Host header.
    pub authority: String,
    /// The path prefix, without a trailing `/` (empty for the root).
    pub path: String,
    /// `https`: TLS over the connection.
    pub tls: bool,
}

/// Why a URL or a TLS setting was refused: each says what was wrong with
/// which value.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Not a URL at all.
    #[error("{url:?} is not a URL: {why}")]
    NotAUrl {
        /// The value given.
        url: String,
        /// The parser's reason.
        why: String,
    },
    /// A scheme other than `http` and `https`.
    #[error("{0:?} must start with https:// or http://")]
    Scheme(String),
    /// No host in the URL.
    #[error("{0:?} has no host")]
    NoHost(String),
    /// The CA file cannot be read.
    #[error("{path}: cannot read it: {why}")]
    CaUnreadable {
        /// The file.
        path: String,
        /// The reason.
        why: String,
    },
    /// The CA file is not PEM.
    #[error("{path}: not a PEM certificate file: {why}")]
    CaNotPem {
        /// The file.
        path: String,
        /// The reason.
        why: String,
    },
    /// The CA file holds no certificate.
    #[error("{0} holds no certificate (expected one or more PEM blocks \"-----BEGIN CERTIFICATE-----\")")]
    CaEmpty(String),
    /// A certificate in the CA file is not a usable root.
    #[error("{path}: a certificate in it cannot be trusted: {why}")]
    CaUntrusted {
        /// The file.
        path: String,
        /// The reason.
        why: String,
    },
    /// The host is not a name a certificate can be checked against.
    #[error("{host:?} is not a valid TLS server name: {why}")]
    ServerName {
        /// The host.
        host: String,
        /// The reason.
        why: String,
    },
}

impl HttpUrl {
    /// Parses `http[s]://host[:port][/path]`.
    pub fn parse(url: &str) -> Result<Self, NetError> {
        let uri: hyper::Uri =
            url.parse()
                .map_err(|e: hyper::http::uri::InvalidUri| NetError::NotAUrl {
                    url: url.to_string(),
                    why: e.to_string(),
                })?;
        let (tls, default_port) = match uri.scheme_str() {
            Some("http") => (false, 80),
            Some("https") => (true, 443),
            _ => return Err(NetError::Scheme(url.to_string())),
        };
        let host = uri
            .host()
            .ok_or_else(|| NetError::NoHost(url.to_string()))?;
        let port = uri.port_u16().unwrap_or(default_port);
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_else(|| host.to_string());
        let path = uri.path().trim_end_matches('/').to_string();
        Ok(Self {
            addr: format!("{host}:{port}"),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            authority,
            path,
            tls,
        })
    }

    /// Whether the host is this machine (`localhost` or a loopback
    /// address), where plain HTTP exposes nothing.
    pub fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

/// The certificates a TLS client trusts: the standard web roots, plus
/// any roots from a PEM file (`--ca-file`), for a private CA or a test
/// server. Built once; cloning shares it.
#[derive(Clone)]
pub struct TlsTrust {
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for TlsTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTrust").finish_non_exhaustive()
    }
}

impl TlsTrust {
    /// The standard web roots alone.
    pub fn web_roots() -> Self {
        Self::with_roots(Self::web_root_store())
    }

    /// The web roots plus every certificate in the PEM file `ca_file`, if
    /// given. A file that cannot be read, or that holds no certificate, or
    /// a certificate that is not a usable root, is an error naming it.
    pub fn load(ca_file: Option<&Path>) -> Result<Self, NetError> {
        let mut roots = Self::web_root_store();
        if let Some(path) = ca_file {
            let shown = path.display().to_string();
            let unreadable = |why: String| NetError::CaUnreadable {
                path: shown.clone(),
                why,
            };
            std::fs::metadata(path).map_err(|e| unreadable(e.to_string()))?;
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| unreadable(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| NetError::CaNotPem {
                    path: shown.clone(),
                    why: e.to_string(),
                })?;
            if certs.is_empty() {
                return Err(NetError::CaEmpty(shown));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| NetError::CaUntrusted {
                    path: shown.clone(),
                    why: e.to_string(),
                })?;
            }
        }
        Ok(Self::with_roots(roots))
    }

    fn web_root_store() -> RootCertStore {
        RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        }
    }

    fn with_roots(roots: RootCertStore) -> Self {
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        // This client speaks HTTP/1.1 only; say so, so that a server
        // offering h2 does not pick it.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self {
            config: Arc::new(config),
        }
    }
}

/// TLS over the connections another [`Connector`] opens: TCP in the
/// daemons, turmoil's network in the simulation. The server must present
/// a certificate for `host` that chains to a trusted root; anything else
/// fails the connect, before a byte of the request is written.
#[derive(Clone)]
pub struct TlsConnector<C> {
    inner: C,
    tls: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl<C: Connector> TlsConnector<C> {
    /// TLS to `host` (a DNS name or an IP address) over `inner`.
    pub fn new(inner: C, host: &str, trust: &TlsTrust) -> Result<Self, NetError> {
        let name = ServerName::try_from(host.to_string()).map_err(|e| NetError::ServerName {
            host: host.to_string(),
            why: e.to_string(),
        })?;
        Ok(Self {
            inner,
            tls: tokio_rustls::TlsConnector::from(trust.config.clone()),
            name,
        })
    }
}

impl<C: Connector> Connector for TlsConnector<C> {
    type Io = tokio_rustls::client::TlsStream<C::Io>;
    async fn connect(&self) -> io::Result<Self::Io> {
        let io = self.inner.connect().await?;
        self.tls.connect(self.name.clone(), io).await.map_err(|e| {
            let host = self.name.to_str();
            io::Error::new(e.kind(), format!("TLS handshake with {host} failed: {e}"))
        })
    }
}

/// Plain or TLS, as a URL's scheme says; never one in place of the other.
#[derive(Clone)]
pub enum MaybeTls<C> {
    /// `http://`.
    Plain(C),
    /// `https://`.
    Tls(TlsConnector<C>),
}

impl<C: Connector> MaybeTls<C> {
    /// The connector `url` asks for, over `inner`.
    pub fn for_url(inner: C, url: &HttpUrl, trust: &TlsTrust) -> Result<Self, NetError> {
        Ok(if url.tls {
            Self::Tls(TlsConnector::new(inner, &url.host, trust)?)
        } else {
            Self::Plain(inner)
        })
    }
}

impl<C: Connector> Connector for MaybeTls<C> {
    type Io = Either<C::Io, tokio_rustls::client::TlsStream<C::Io>>;
    async fn connect(&self) -> io::Result<Self::Io> {
        Ok(match self {
            Self::Plain(c) => Either::Left(c.connect().await?),
            Self::Tls(c) => Either::Right(c.connect().await?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_urls_are_taken_apart() {
        let u = HttpUrl::parse("http://127.0.0.1:9000/base/").unwrap();
        assert_eq!(u.addr, "127.0.0.1:9000");
        assert_eq!(u.authority, "127.0.0.1:9000");
        assert_eq!(u.path, "/base");
        let u = HttpUrl::parse("http://localhost").unwrap();
        assert_eq!((u.addr.as_str(), u.path.as_str()), ("localhost:80", ""));
        assert!(!u.tls && u.is_loopback());
        let u = HttpUrl::parse("https://graph.facebook.com").unwrap();
        assert_eq!(u.addr, "graph.facebook.com:443");
        assert_eq!(u.host, "graph.facebook.com");
        assert!(u.tls && !u.is_loopback());
        let u = HttpUrl::parse("https://[::1]:8443/x").unwrap();
        assert_eq!((u.addr.as_str(), u.host.as_str()), ("[::1]:8443", "::1"));
        assert!(u.is_loopback());
        assert!(HttpUrl::parse("ftp://x")
            .unwrap_err()
            .to_string()
            .contains("https://"));
    }
}
