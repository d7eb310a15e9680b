//! emgate: a caching gateway for the Veeam Backup Enterprise Manager REST API.

pub mod cache;
pub mod cli;
pub mod config;
pub mod convert;
pub mod digest;
pub mod em;
pub mod gateway;
pub mod ops;
pub mod secret;
pub mod sim;
