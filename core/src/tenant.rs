//! Tenants: the businesses that send through oncesend, each with its own
//! provider account. The tenant `default` always exists and uses the
//! provider the daemon was started with; others are stored.

use crate::ids::TenantId;
use serde::{Deserialize, Serialize};

/// The first wait before a temporarily blocked sender is probed again;
/// each failed probe doubles it, up to [`MAX_PROBE_WAIT_MS`].
pub const FIRST_PROBE_WAIT_MS: u64 = 60_000;
/// The longest wait between probes of a temporarily blocked sender.
pub const MAX_PROBE_WAIT_MS: u64 = 3_600_000;

/// Why and since when a tenant's sends are held back: nothing of its goes
/// to the provider, and its runs wait (they do not fail and lose no
/// attempts) until it is resumed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderPause {
    /// What the provider (or the operator) said.
    pub reason: String,
    /// The provider's error code, if a provider error paused it.
    pub code: Option<i64>,
    /// When the pause was recorded (store time).
    pub since_ms: u64,
    /// For a temporary block (368, 131048): when the single half-open
    /// probe may go. `None`: it waits for a person.
    pub probe_at_ms: Option<u64>,
    /// Probes taken so far; each one doubles the next wait.
    pub probes: u32,
    /// The fingerprint of the provider settings the provider refused
    /// (`default` only: other tenants end a pause with new settings).
    pub settings: Option<String>,
}

impl SenderPause {
    /// The wait before probe number `probes + 1`.
    pub fn probe_wait_ms(probes: u32) -> u64 {
        FIRST_PROBE_WAIT_MS
            .saturating_mul(1u64 << probes.min(20))
            .min(MAX_PROBE_WAIT_MS)
    }

    /// True when an engine whose `default` settings have the fingerprint
    /// `settings` should lift this pause: the provider refused other
    /// settings (a restart with a new token). A pause set by an operator
    /// records none and outlives restarts.
    pub fn outlived_by(&self, settings: &str) -> bool {
        self.settings.as_deref().is_some_and(|s| s != settings)
    }

    /// True when a claim or a send may go to the provider now: the pause
    /// is temporary and its probe is due.
    pub fn probe_due(&self, now_ms: u64) -> bool {
        self.probe_at_ms.is_some_and(|at| at <= now_ms)
    }
}

/// Most bytes of any one provider setting.
pub const MAX_SETTING_BYTES: usize = 1024;

/// Why tenant settings were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    /// A setting that is empty, too long, or malformed.
    #[error("{field}: {why}")]
    Setting {
        /// Which setting.
        field: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// The default tenant is configured by flags and environment.
    #[error("the tenant \"default\" is configured by the engine's flags and environment, not through the API")]
    Default,
}

/// The WhatsApp Cloud API account a tenant sends from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudApiSettings {
    /// The API's base URL, e.g. `https://graph.facebook.com`.
    pub base_url: String,
    /// The Graph API version, e.g. `v21.0`.
    pub version: String,
    /// The business phone number's id: the sender.
    pub phone_number_id: String,
    /// The access token, sent as a bearer token.
    pub token: String,
}

/// Where a tenant's messages go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "provider", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ProviderSettings {
    /// Written as JSON lines by the engine, sent nowhere. (A struct
    /// variant, so unknown fields beside it are refused.)
    Log {},
    /// The WhatsApp Cloud API.
    CloudApi {
        /// The account.
        cloud_api: CloudApiSettings,
    },
}

impl ProviderSettings {
    /// The provider's name, as flags and the API spell it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Log {} => "log",
            Self::CloudApi { .. } => "cloud-api",
        }
    }
}

/// A stored tenant. Built only by [`Tenant::new`], and read from JSON
/// through the same checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "TenantParts")]
pub struct Tenant {
    id: TenantId,
    provider: ProviderSettings,
}

/// A tenant as JSON, before [`Tenant::new`] checks it.
#[derive(Deserialize)]
struct TenantParts {
    id: TenantId,
    provider: ProviderSettings,
}

impl TryFrom<TenantParts> for Tenant {
    type Error = TenantError;

    fn try_from(p: TenantParts) -> Result<Self, TenantError> {
        Tenant::new(p.id, p.provider)
    }
}

fn setting(field: &'static str, value: &str) -> Result<(), TenantError> {
    let why = if value.is_empty() {
        "must not be empty".to_string()
    } else if value.len() > MAX_SETTING_BYTES {
        format!("must be at most {MAX_SETTING_BYTES} bytes")
    } else if value.chars().any(char::is_control) {
        "must not hold control characters".to_string()
    } else {
        return Ok(());
    };
    Err(TenantError::Setting { field, why })
}

impl Tenant {
    /// Its name.
    pub fn id(&self) -> &TenantId {
        &self.id
    }

    /// Its provider.
    pub fn provider(&self) -> &ProviderSettings {
        &self.provider
    }

    /// Checks a tenant's settings where they enter the system.
    pub fn new(id: TenantId, provider: ProviderSettings) -> Result<Self, TenantError> {
        if id == TenantId::default_tenant() {
            return Err(TenantError::Default);
        }
        if let ProviderSettings::CloudApi { cloud_api: c } = &provider {
            setting("cloud_api.base_url", &c.base_url)?;
            if !(c.base_url.starts_with("http://") || c.base_url.starts_with("https://")) {
                return Err(TenantError::Setting {
                    field: "cloud_api.base_url",
                    why: format!(
                        "{:?} must start with http:// or https://",
                        c.base_url.chars().take(64).collect::<String>()
                    ),
                });
            }
            setting("cloud_api.version", &c.version)?;
            setting("cloud_api.token", &c.token)?;
            setting("cloud_api.phone_number_id", &c.phone_number_id)?;
            if !c.phone_number_id.bytes().all(|b| b.is_ascii_digit()) {
                return Err(TenantError::Setting {
                    field: "cloud_api.phone_number_id",
                    why: "must be the numeric id of the phone number, not the number itself".into(),
                });
            }
        }
        Ok(Self { id, provider })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cloud(base_url: &str, phone_number_id: &str) -> ProviderSettings {
        ProviderSettings::CloudApi {
            cloud_api: CloudApiSettings {
                base_url: base_url.into(),
                version: "v21.0".into(),
                phone_number_id: phone_number_id.into(),
                token: "EAAG".into(),
            },
        }
    }

    #[test]
    fn settings_are_checked_with_a_reason() {
        let acme = TenantId::new("acme").unwrap();
        assert!(Tenant::new(acme.clone(), cloud("https://graph.facebook.com", "1234")).is_ok());
        assert!(Tenant::new(acme.clone(), ProviderSettings::Log {}).is_ok());
        let e = Tenant::new(acme.clone(), cloud("graph.facebook.com", "1234")).unwrap_err();
        assert!(e.to_string().contains("http://"), "{e}");
        let e = Tenant::new(acme, cloud("https://x", "+5511")).unwrap_err();
        assert!(e.to_string().contains("phone_number_id"), "{e}");
        assert_eq!(
            Tenant::new(TenantId::default_tenant(), ProviderSettings::Log {}),
            Err(TenantError::Default)
        );
    }

    #[test]
    fn a_setting_is_refused_empty_too_long_or_with_control_characters() {
        let acme = TenantId::new("acme").unwrap();
        let with_token = |token: String| {
            Tenant::new(
                acme.clone(),
                ProviderSettings::CloudApi {
                    cloud_api: CloudApiSettings {
                        base_url: "https://graph.facebook.com".into(),
                        version: "v21.0".into(),
                        phone_number_id: "1234".into(),
                        token,
                    },
                },
            )
        };
        assert!(with_token("t".repeat(MAX_SETTING_BYTES)).is_ok());
        for (token, why) in [
            (String::new(), "must not be empty"),
            ("t".repeat(MAX_SETTING_BYTES + 1), "at most 1024 bytes"),
            ("EAAG\nX".to_string(), "control characters"),
        ] {
            let e = with_token(token).unwrap_err().to_string();
            assert!(e.contains("cloud_api.token") && e.contains(why), "{e}");
        }
    }

    #[test]
    fn settings_json_is_tagged_and_strict() {
        let s: ProviderSettings = serde_json::from_str(
            r#"{"provider":"cloud-api","cloud_api":{"base_url":"http://x","version":"v1","phone_number_id":"1","token":"t"}}"#,
        )
        .unwrap();
        assert_eq!(s.kind(), "cloud-api");
        let log: ProviderSettings = serde_json::from_str(r#"{"provider":"log"}"#).unwrap();
        assert_eq!(log, ProviderSettings::Log {});
        assert!(serde_json::from_str::<ProviderSettings>(r#"{"provider":"log","x":1}"#).is_err());
        assert!(serde_json::from_str::<ProviderSettings>(r#"{"provider":"sms"}"#).is_err());
    }

    #[test]
    fn a_tenant_read_from_json_is_checked_like_a_new_one() {
        let good = Tenant::new(
            TenantId::new("acme").unwrap(),
            cloud("https://graph.facebook.com", "1234"),
        )
        .unwrap();
        let json = serde_json::to_value(&good).unwrap();
        assert_eq!(
            serde_json::from_value::<Tenant>(json.clone()).unwrap(),
            good
        );
        let mut bad = json.clone();
        bad["provider"]["cloud_api"]["base_url"] = "graph.facebook.com".into();
        let e = serde_json::from_value::<Tenant>(bad).unwrap_err();
        assert!(e.to_string().contains("http://"), "{e}");
        let mut default = json;
        default["id"] = "default".into();
        assert!(serde_json::from_value::<Tenant>(default).is_err());
    }
}
