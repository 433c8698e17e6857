//! Rebuilds this crate when a migration changes: `sqlx::migrate!` embeds `schemas/migrations` at
//! compile time, and cargo would not otherwise know that the directory is an input.

fn main() {
    println!("cargo:rerun-if-changed=../../schemas/migrations");
}
