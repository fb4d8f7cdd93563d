//! The network, made pluggable: the daemons use tokio's TCP, the simulation
//! plugs in turmoil's. Everything above this module is the same code.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

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

/// A plain-HTTP URL taken apart: where to connect and what to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// `host:port`, for the connector.
    pub addr: String,
    /// The Host header.
    pub authority: String,
    /// The path prefix, without a trailing `/` (empty for the root).
    pub path: String,
}

impl HttpUrl {
    /// Parses `http://host[:port][/path]`. `https` is refused with a hint:
    /// the daemons speak plain HTTP and expect TLS to end at a proxy.
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "{url:?}: https is not built in; run a local TLS proxy (for example stunnel or nginx) in front of it and give its http:// URL"
                ))
            }
            _ => return Err(format!("{url:?} must start with http://")),
        }
        let host = uri.host().ok_or_else(|| format!("{url:?} has no host"))?;
        let port = uri.port_u16().unwrap_or(80);
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_else(|| host.to_string());
        let path = uri.path().trim_end_matches('/').to_string();
        Ok(Self {
            addr: format!("{host}:{port}"),
            authority,
            path,
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
        assert!(HttpUrl::parse("https://graph.facebook.com")
            .unwrap_err()
            .contains("TLS proxy"));
        assert!(HttpUrl::parse("ftp://x").is_err());
    }
}
