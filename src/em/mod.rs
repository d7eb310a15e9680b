//! Enterprise Manager as a service.

pub mod client;
pub mod session;
pub mod tls;
