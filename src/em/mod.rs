//! Enterprise Manager as a service: everything the gateway needs to talk to
//! EM, and nothing of who its clients are.
//!
//! - [`client`]: the HTTP client (pooled connections over rustls, a timeout
//!   per request, a cap on answers);
//! - [`tls`]: how EM's certificate is trusted (roots, CA file, pin);
//! - [`session`]: the one pooled EM logon every client's request uses;
//! - [`background`]: the lane of EM requests emgate starts on its own.

pub mod background;
pub mod client;
pub mod session;
pub mod tls;
