//! oncesend in production: stores over real databases, the engine's HTTP
//! layer, the worker driver, providers, and the daemons built from them.
//!
//! The drivers here only do I/O. Every decision about claiming, fencing,
//! retrying and deduplicating is made by the machines of `oncesend-core`,
//! which is why the simulation, running these same drivers over a
//! simulated network, tests production.

pub mod api;
pub mod clock;
pub mod coalesce;
pub mod config;
pub mod daemon;
pub mod db;
pub mod engine;
/// Harnesses for the fuzz targets and their corpus replays; only with the
/// `fuzzing` feature, which `fuzz/` and this crate's own tests turn on.
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod net;
pub mod provider;
pub mod store;
pub mod worker;
