//! Benchmarks of oncesend: the criterion benches (`benches/`), the raw-SQL
//! floor (`pgbench/`), and the load tool, [`load`], whose binary is
//! `oncesend-bench` (also run as `oncesend bench`).

pub mod load;
pub mod sizes;
