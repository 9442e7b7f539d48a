//! Test support shared by the daemon's integration tests.
pub mod fake_provider;
pub mod world;
