//! Flows and tenants (kept as JSON bodies), and each tenant's sender
//! pause.

use super::batch::Batch;
use super::codec::{db, decode_err, pause_from_row};
use super::statements::{self, common};
use super::tx::Tx;
use oncesend_core::store::rules;
use oncesend_core::tenant::SenderPause;
use oncesend_core::{Flow, FlowId, StoreReply, Tenant, TenantId};
use sqlx::Row;
use std::collections::BTreeMap;

impl Batch<'_> {
    pub(super) async fn put_flow(&mut self, tenant: TenantId, flow: Flow) -> Tx<StoreReply> {
        let body = serde_json::to_string(&flow).expect("a flow serializes");
        let existed = sqlx::query(common::FLOW_EXISTS)
            .bind(tenant.as_str())
            .bind(flow.id().as_str())
            .fetch_optional(&mut *self.conn)
            .await?
            .is_some();
        sqlx::query(common::PUT_FLOW)
            .bind(tenant.as_str())
            .bind(flow.id().as_str())
            .bind(body)
            .execute(&mut *self.conn)
            .await?;
        Ok(StoreReply::FlowPut { created: !existed })
    }

    pub(super) async fn get_flow(&mut self, tenant: TenantId, flow: FlowId) -> Tx<StoreReply> {
        Ok(match self.load_flow(&tenant, &flow).await? {
            Some(flow) => StoreReply::Flow(flow),
            None => StoreReply::NotFound,
        })
    }

    pub(super) async fn list_flows(
        &mut self,
        after: Option<(TenantId, FlowId)>,
        limit: u32,
    ) -> Tx<StoreReply> {
        let (tenant, flow) = after
            .as_ref()
            .map_or(("", ""), |(t, f)| (t.as_str(), f.as_str()));
        let rows = sqlx::query(common::LIST_FLOWS)
            .bind(tenant)
            .bind(flow)
            .bind(limit as i64)
            .fetch_all(&mut *self.conn)
            .await?;
        let flows = rows
            .iter()
            .map(|row| {
                let tenant = TenantId::new(row.try_get::<String, _>(0)?)
                    .map_err(|e| decode_err("tenant", e))?;
                let body: String = row.try_get(1)?;
                let flow: Flow = serde_json::from_str(&body).map_err(|e| decode_err("flow", e))?;
                Ok((tenant, flow))
            })
            .collect::<Tx<Vec<_>>>()?;
        Ok(StoreReply::Flows(flows))
    }

    /// The tenant's flow of that name, if it has one.
    pub(super) async fn load_flow(&mut self, tenant: &TenantId, flow: &FlowId) -> Tx<Option<Flow>> {
        let row = sqlx::query(common::GET_FLOW)
            .bind(tenant.as_str())
            .bind(flow.as_str())
            .fetch_optional(&mut *self.conn)
            .await?;
        match row {
            Some(row) => {
                let body: String = row.try_get(0)?;
                Ok(Some(
                    serde_json::from_str(&body).map_err(|e| decode_err("flow", e))?,
                ))
            }
            None => Ok(None),
        }
    }

    /// Whether the tenant is stored (`default` never is).
    pub(super) async fn tenant_stored(&mut self, tenant: &TenantId) -> Tx<bool> {
        Ok(sqlx::query(common::TENANT_EXISTS)
            .bind(tenant.as_str())
            .fetch_optional(&mut *self.conn)
            .await?
            .is_some())
    }

    pub(super) async fn put_tenant(&mut self, tenant: Tenant) -> Tx<StoreReply> {
        assert!(
            *tenant.id() != TenantId::default_tenant(),
            "the default tenant is never stored"
        );
        let body = serde_json::to_string(&tenant).expect("a tenant serializes");
        let existed = sqlx::query(common::TENANT_EXISTS)
            .bind(tenant.id().as_str())
            .fetch_optional(&mut *self.conn)
            .await?
            .is_some();
        sqlx::query(common::PUT_TENANT)
            .bind(tenant.id().as_str())
            .bind(body)
            .execute(&mut *self.conn)
            .await?;
        // New settings (a new token, say) end a pause.
        self.delete_pause(tenant.id()).await?;
        Ok(StoreReply::TenantPut { created: !existed })
    }

    pub(super) async fn get_tenant(&mut self, tenant: TenantId) -> Tx<StoreReply> {
        let row = sqlx::query(common::GET_TENANT)
            .bind(tenant.as_str())
            .fetch_optional(&mut *self.conn)
            .await?;
        match row {
            Some(row) => {
                let body: String = row.try_get(0)?;
                let tenant: Tenant =
                    serde_json::from_str(&body).map_err(|e| decode_err("tenant", e))?;
                Ok(StoreReply::Tenant(tenant))
            }
            None => Ok(StoreReply::NotFound),
        }
    }

    pub(super) async fn list_tenants(&mut self) -> Tx<StoreReply> {
        let rows = sqlx::query(common::LIST_TENANTS)
            .fetch_all(&mut *self.conn)
            .await?;
        let tenants = rows
            .iter()
            .map(|row| {
                let body: String = row.try_get(0)?;
                serde_json::from_str(&body).map_err(|e| decode_err("tenant", e))
            })
            .collect::<Tx<Vec<Tenant>>>()?;
        Ok(StoreReply::Tenants(tenants))
    }

    /// Pauses a tenant's sender as the core's rules say, writing the pause
    /// only when it changed.
    pub(super) async fn pause_sender(
        &mut self,
        tenant: TenantId,
        reason: String,
        code: Option<i64>,
        temporary: bool,
        settings: Option<String>,
        now_ms: u64,
    ) -> Tx<StoreReply> {
        let mut pause = self
            .load_pauses(std::slice::from_ref(&tenant))
            .await?
            .remove(&tenant);
        let before = pause.clone();
        let reply = rules::pause_sender(
            &mut pause,
            &reason,
            code,
            temporary,
            settings.as_deref(),
            now_ms,
        );
        if pause != before {
            if let Some(p) = &pause {
                self.write_pause(&tenant, p).await?;
            }
        }
        Ok(reply)
    }

    pub(super) async fn list_paused_senders(&mut self) -> Tx<StoreReply> {
        let rows = sqlx::query(common::LIST_PAUSED_SENDERS)
            .fetch_all(&mut *self.conn)
            .await?;
        Ok(StoreReply::PausedSenders(
            rows.iter().map(pause_from_row).collect::<Tx<_>>()?,
        ))
    }

    /// The pauses of `tenants` (absent: active), locked for the rest of
    /// the transaction on PostgreSQL, so a probe is taken once.
    pub(super) async fn load_pauses(
        &mut self,
        tenants: &[TenantId],
    ) -> Tx<BTreeMap<TenantId, SenderPause>> {
        let list = serde_json::to_string(&tenants.iter().map(TenantId::as_str).collect::<Vec<_>>())
            .expect("names serialize");
        let rows = sqlx::query(statements::of(self.backend).load_pauses)
            .bind(list)
            .fetch_all(&mut *self.conn)
            .await?;
        rows.iter().map(pause_from_row).collect()
    }

    pub(super) async fn write_pause(&mut self, tenant: &TenantId, p: &SenderPause) -> Tx<()> {
        sqlx::query(common::WRITE_PAUSE)
            .bind(tenant.as_str())
            .bind(p.reason.as_str())
            .bind(p.code)
            .bind(db(p.since_ms))
            .bind(p.probe_at_ms.map(db))
            .bind(i64::from(p.probes))
            .bind(p.settings.as_deref())
            .execute(&mut *self.conn)
            .await?;
        Ok(())
    }

    /// Ends a tenant's pause; answers whether it had one.
    pub(super) async fn delete_pause(&mut self, tenant: &TenantId) -> Tx<bool> {
        let done = sqlx::query(common::DELETE_PAUSE)
            .bind(tenant.as_str())
            .execute(&mut *self.conn)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
