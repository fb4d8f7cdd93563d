//! Routes each message to its tenant's provider: `default` to the one the
//! daemon was started with, others to the settings stored by
//! `PUT /v1/tenants/{tenant}`.

use super::{CloudApiProvider, LogProvider, NullProvider, Provider};
use crate::clock::TokioClock;
use crate::net::{Connector, Network, Tcp, TcpConnector, TlsTrust};
use crate::store::Store;
use oncesend_core::{
    DeliveryOutcome, OutboundMessage, ProviderSettings, StoreOp, StoreReply, TenantId,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Any provider the daemons can be configured with, over connections `C`.
pub enum AnyProvider<C: Connector = TcpConnector> {
    /// JSON lines.
    Log(LogProvider),
    /// The WhatsApp Cloud API.
    CloudApi(CloudApiProvider<C>),
    /// Sends nothing.
    Null(NullProvider),
}

impl<C: Connector> Clone for AnyProvider<C> {
    fn clone(&self) -> Self {
        match self {
            Self::Log(p) => Self::Log(p.clone()),
            Self::CloudApi(p) => Self::CloudApi(p.clone()),
            Self::Null(p) => Self::Null(p.clone()),
        }
    }
}

impl<C: Connector> Provider for AnyProvider<C> {
    async fn send(&self, message: OutboundMessage) -> DeliveryOutcome {
        match self {
            Self::Log(p) => p.send(message).await,
            Self::CloudApi(p) => p.send(message).await,
            Self::Null(p) => p.send(message).await,
        }
    }
}

/// How long a stored tenant's settings are trusted before being read
/// again, so that an update made through another engine takes effect.
const TENANT_TTL_MS: u64 = 30_000;
/// Most tenants whose providers are kept built.
const MAX_CACHED_TENANTS: usize = 1_024;

struct Cached<C: Connector> {
    provider: AnyProvider<C>,
    fetched_ms: u64,
}

/// The per-tenant provider, reaching the Cloud API over network `N`.
pub struct TenantProviders<S, N: Network = Tcp> {
    default: AnyProvider<N::Connector>,
    log: LogProvider,
    store: S,
    network: N,
    clock: TokioClock,
    timeout: Duration,
    trust: TlsTrust,
    cache: Arc<Mutex<BTreeMap<TenantId, Cached<N::Connector>>>>,
}

impl<S: Clone, N: Network> Clone for TenantProviders<S, N> {
    fn clone(&self) -> Self {
        Self {
            network: self.network.clone(),
            default: self.default.clone(),
            log: self.log.clone(),
            store: self.store.clone(),
            clock: self.clock.clone(),
            timeout: self.timeout,
            trust: self.trust.clone(),
            cache: self.cache.clone(),
        }
    }
}

impl<S: Store> TenantProviders<S> {
    /// `default` serves the tenant `default`; tenants stored with the log
    /// provider write to `log`; stored Cloud API tenants are reached over
    /// TCP (TLS trusting `trust`).
    pub fn new(
        default: AnyProvider,
        log: LogProvider,
        store: S,
        clock: TokioClock,
        timeout: Duration,
        trust: TlsTrust,
    ) -> Self {
        Self::over(Tcp, default, log, store, clock, timeout, trust)
    }
}

impl<S: Store, N: Network> TenantProviders<S, N> {
    /// [`TenantProviders::new`] over `network`.
    pub fn over(
        network: N,
        default: AnyProvider<N::Connector>,
        log: LogProvider,
        store: S,
        clock: TokioClock,
        timeout: Duration,
        trust: TlsTrust,
    ) -> Self {
        Self {
            network,
            default,
            log,
            store,
            clock,
            timeout,
            trust,
            cache: Arc::default(),
        }
    }

    /// Builds the provider for stored settings.
    pub fn build(
        &self,
        settings: &ProviderSettings,
    ) -> Result<AnyProvider<N::Connector>, crate::net::NetError> {
        Ok(match settings {
            ProviderSettings::Log {} => AnyProvider::Log(self.log.clone()),
            ProviderSettings::CloudApi { cloud_api } => AnyProvider::CloudApi(
                CloudApiProvider::over(&self.network, cloud_api, self.timeout, &self.trust)?,
            ),
        })
    }

    /// Forgets a tenant's provider, after its settings changed here.
    pub fn forget(&self, tenant: &TenantId) {
        self.cache.lock().expect("tenant cache").remove(tenant);
    }

    async fn provider_for(
        &self,
        tenant: &TenantId,
    ) -> Result<AnyProvider<N::Connector>, DeliveryOutcome> {
        if *tenant == TenantId::default_tenant() {
            return Ok(self.default.clone());
        }
        let now_ms = self.clock.now_ms();
        if let Some(c) = self.cache.lock().expect("tenant cache").get(tenant) {
            if now_ms.saturating_sub(c.fetched_ms) < TENANT_TTL_MS {
                return Ok(c.provider.clone());
            }
        }
        let refuse = |retryable: bool, reason: String| DeliveryOutcome::Failed {
            retryable,
            reason,
            retry_after_ms: None,
        };
        let reply = self
            .store
            .apply(StoreOp::GetTenant {
                tenant: tenant.clone(),
            })
            .await
            .map_err(|e| refuse(true, format!("cannot read tenant {tenant}: {e}")))?;
        let settings = match reply {
            StoreReply::Tenant(t) => t.provider().clone(),
            StoreReply::NotFound => {
                return Err(refuse(
                    false,
                    format!(
                        "tenant {tenant:?} does not exist; create it with PUT /v1/tenants/{tenant}"
                    ),
                ))
            }
            other => return Err(refuse(true, format!("unexpected store reply {other:?}"))),
        };
        let provider = self
            .build(&settings)
            .map_err(|e| refuse(false, format!("tenant {tenant}: {e}")))?;
        let mut cache = self.cache.lock().expect("tenant cache");
        if cache.len() >= MAX_CACHED_TENANTS {
            cache.clear();
        }
        cache.insert(
            tenant.clone(),
            Cached {
                provider: provider.clone(),
                fetched_ms: now_ms,
            },
        );
        Ok(provider)
    }
}

impl<S: Store, N: Network> Provider for TenantProviders<S, N> {
    async fn send(&self, message: OutboundMessage) -> DeliveryOutcome {
        match self.provider_for(&message.tenant).await {
            Ok(p) => p.send(message).await,
            Err(refused) => refused,
        }
    }
}
