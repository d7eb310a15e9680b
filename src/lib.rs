//! emgate: a caching gateway for the Veeam Backup Enterprise Manager REST API.
//!
//! A request's path through the code, in the order it meets the modules:
//! [`server`] accepts the connection and runs the tower stack (request id,
//! one log line per request) and routes; `/api` requests go to [`proxy`],
//! which checks the path ([`path`]), strips the client's credentials and
//! hop-by-hop headers, and asks EM through the pooled session of
//! [`session`], which logs on, re-logs on once for everybody after EM's 401,
//! keeps the session alive and logs out at shutdown. [`upstream`] is the
//! HTTP client to EM (rustls, pooled connections, timeout, size cap).
//! Errors are typed in [`error`] and become EM-shaped responses there.
//!
//! Around that: [`config`] loads and validates settings, [`cli`] is the
//! command line, [`demo`] runs the simulator and the gateway together,
//! [`logging`] and [`shutdown`] set up logs and signals, and [`sim`] is a
//! self-contained Enterprise Manager simulator for tests, demo and benchmarks.

pub mod access;
pub mod admin;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod config;
pub mod convert;
pub mod demo;
pub mod error;
pub mod limit;
pub mod listen_tls;
pub mod logging;
pub mod logon;
pub mod metrics;
pub mod path;
pub mod probe;
pub mod proxy;
pub mod render;
pub mod request_id;
pub mod response;
pub mod restore_points;
pub mod secret;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod sim;
pub mod upstream;
