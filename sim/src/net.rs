//! turmoil's simulated network, plugged into production's network seams:
//! an axum `Listener` for the engine's server and a `Connector` for the
//! HTTP client the workers use.

use oncesend::net::Connector;
use std::io;

/// The engine's listening socket, on the simulated network.
pub struct SimListener(pub turmoil::net::TcpListener);

impl axum::serve::Listener for SimListener {
    type Io = turmoil::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok(pair) => return pair,
                // A failed accept is the network's business; keep serving.
                Err(_) => tokio::task::yield_now().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// Opens simulated TCP connections to `host:port`.
#[derive(Clone, Debug)]
pub struct SimConnector {
    addr: String,
}

impl SimConnector {
    /// A connector for a simulated `host:port`.
    pub fn new(addr: impl Into<String>) -> Self {
        Self { addr: addr.into() }
    }
}

impl Connector for SimConnector {
    type Io = turmoil::net::TcpStream;
    async fn connect(&self) -> io::Result<Self::Io> {
        turmoil::net::TcpStream::connect(self.addr.as_str()).await
    }
}

/// turmoil's network, as the production builders take a network.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimNet;

impl oncesend::net::Network for SimNet {
    type Connector = SimConnector;
    fn connector(&self, addr: &str) -> SimConnector {
        SimConnector::new(addr)
    }
}
