//! Identifiers, each validated where it enters the system.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The name is empty or too long.
    #[error("{kind} must be 1 to {max} characters long, got {len}")]
    Length {
        /// Which kind of identifier.
        kind: &'static str,
        /// Longest allowed.
        max: usize,
        /// What was given.
        len: usize,
    },
    /// The name holds a character outside `[A-Za-z0-9_.-]`.
    #[error("{kind} may hold only letters, digits, '_', '.' and '-'; found {found:?}")]
    Character {
        /// Which kind of identifier.
        kind: &'static str,
        /// The first offending character.
        found: char,
    },
    /// A run id that is not a UUID.
    #[error("run id must be a UUID such as 0192f0c4-8d2e-7c3a-9b1f-5a6d7e8f9012: {0}")]
    RunId(String),
    /// A delivery key that is not `run_id:step`.
    #[error("delivery key must look like <run_id>:<step>, got {0:?}")]
    DeliveryKey(String),
}

fn check_name(kind: &'static str, s: &str, max: usize) -> Result<(), IdError> {
    if s.is_empty() || s.len() > max {
        return Err(IdError::Length {
            kind,
            max,
            len: s.len(),
        });
    }
    if let Some(found) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(IdError::Character { kind, found });
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps a name.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check_name($kind, &s, $max)?;
                Ok(Self(s))
            }
            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }
    };
}

name_type!(
    /// A tenant: one business sending through oncesend. `default` always exists.
    TenantId, "tenant id", 64
);
name_type!(
    /// A flow's name, unique within its tenant.
    FlowId, "flow id", 64
);
name_type!(
    /// A processor that claims runs. It owns leases; its id shows in logs.
    WorkerId, "worker id", 128
);

impl TenantId {
    /// The tenant that exists out of the box.
    pub fn default_tenant() -> Self {
        Self("default".to_string())
    }
}

/// A run's id: a UUID v7, so ids sort by creation time.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(pub Uuid);

impl RunId {
    /// A v7 id from a wall-clock time and 64 random bits, both supplied by
    /// the caller so that the core stays deterministic.
    pub fn new(now_ms: u64, random: u64) -> Self {
        // The v7 layout keeps 74 of these 80 bits; the low 62 bits of
        // `random` land in bits the version and variant never overwrite.
        let mut bytes = [0u8; 10];
        bytes[2..].copy_from_slice(&random.to_be_bytes());
        bytes[..2].copy_from_slice(&((random >> 62) as u16 ^ (random >> 40) as u16).to_be_bytes());
        RunId(uuid::Builder::from_unix_timestamp_millis(now_ms, &bytes).into_uuid())
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for RunId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Uuid::parse_str(s)
            .map(RunId)
            .map_err(|e| IdError::RunId(e.to_string()))
    }
}

/// The idempotency key of one delivery: `run_id:step`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeliveryKey {
    /// The run the step belongs to.
    pub run: RunId,
    /// The step's index, from 0.
    pub step: u32,
}

impl fmt::Display for DeliveryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.run, self.step)
    }
}

impl FromStr for DeliveryKey {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let bad = || IdError::DeliveryKey(s.chars().take(80).collect());
        let (run, step) = s.rsplit_once(':').ok_or_else(bad)?;
        let run = run.parse::<RunId>().map_err(|_| bad())?;
        let step = step.parse::<u32>().map_err(|_| bad())?;
        Ok(DeliveryKey { run, step })
    }
}

impl TryFrom<String> for DeliveryKey {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        s.parse()
    }
}

impl From<DeliveryKey> for String {
    fn from(k: DeliveryKey) -> String {
        k.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated_with_a_reason() {
        assert!(TenantId::new("acme-br_1.x").is_ok());
        let e = TenantId::new("").unwrap_err();
        assert!(e.to_string().contains("1 to 64"), "{e}");
        let e = FlowId::new("hello world").unwrap_err();
        assert_eq!(
            e,
            IdError::Character {
                kind: "flow id",
                found: ' '
            }
        );
        assert!(FlowId::new("x".repeat(65)).is_err());
    }

    #[test]
    fn run_ids_are_v7_and_sort_by_time() {
        let a = RunId::new(1_000, 99);
        let b = RunId::new(2_000, 1);
        assert_eq!(a.0.get_version_num(), 7);
        assert!(a < b);
        assert_eq!(a, RunId::new(1_000, 99));
        assert_ne!(a, RunId::new(1_000, 98));
    }

    #[test]
    fn delivery_keys_round_trip() {
        let k = DeliveryKey {
            run: RunId::new(5, 5),
            step: 3,
        };
        let s = k.to_string();
        assert!(s.ends_with(":3"));
        assert_eq!(s.parse::<DeliveryKey>().unwrap(), k);
        assert!("nope:1".parse::<DeliveryKey>().is_err());
        assert!(format!("{}:x", k.run).parse::<DeliveryKey>().is_err());
        let json = serde_json::to_string(&k).unwrap();
        assert_eq!(serde_json::from_str::<DeliveryKey>(&json).unwrap(), k);
    }
}
