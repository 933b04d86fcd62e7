//! `sqlx::migrate!` embeds the `.sql` files when this crate compiles, but cargo does not know
//! about them: without this a new migration file would not reach the binary until some Rust
//! file of the crate changed.
fn main() {
    println!("cargo:rerun-if-changed=.");
}
