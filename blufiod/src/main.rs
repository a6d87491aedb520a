//! blufiod: tmp
mod config;
fn main() {}
