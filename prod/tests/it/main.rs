//! Every integration test of the production crate, in one test binary: one
//! link of the crate and its dependencies instead of one per file, and the
//! files' tests run side by side (most of their time is spent waiting on
//! child processes, databases and sockets). Each database a test makes is
//! named after the test, so none shares one with another.

mod common;
mod support;

mod bad_input;
mod bench_entry;
mod chaos;
mod console;
mod console_api;
mod e2e;
mod fuzz_corpus;
mod message_kinds;
mod operators;
mod processes;
mod sender_pause;
mod sql_bad_conditions;
mod sql_concurrency;
mod sql_conformance;
mod sql_enqueue_race;
mod sql_notify;
mod sql_promotion_race;
mod sql_schema;
mod sql_upgrade;
mod tls;
