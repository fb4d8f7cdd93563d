//! The deterministic simulation of oncesend on turmoil.
//!
//! It runs the production engine router, worker driver and core machines
//! over turmoil's simulated network against the reference store, injects
//! faults from a seed or an explicit schedule, and holds every history to
//! the core's checker. Legacy mode replays the old dual-processor race.

pub mod db;
pub mod fault;
/// Harnesses for the fuzz targets and their corpus replays; only with the
/// `fuzzing` feature, which `fuzz/` and this crate's own tests turn on.
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod html;
pub mod legacy;
pub mod marks;
pub mod meta;
pub mod net;
pub mod provider;
pub mod trace;
pub mod world;

pub use fault::{FaultEvent, FaultKind, Node};
pub use world::{run_seed, Faults, Mode, SeedResult, SimConfig};
