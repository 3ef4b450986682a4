//! `redis-maint-sim`: the maintenance simulator as a standalone proxy.
fn main() {}
