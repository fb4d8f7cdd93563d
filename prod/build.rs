//! `sqlx::migrate!` embeds the migrations at compile time, but cargo does
//! not know it read them: without this, a new migration file would not
//! rebuild the crate, and a binary would ship without it.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
