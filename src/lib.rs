//! emgate: a caching gateway for the Veeam Backup Enterprise Manager REST API.
//!
//! The folders, in the order a request meets them. Each may use only the
//! ones listed after it (`tests/layering.rs` fails the build otherwise):
//!
//! - [`cli`]: the commands (`serve`, `sim`, `demo`, `check-config`,
//!   `client add`, `probe`). It loads settings, runs the start-up checks
//!   and composes everything below; nothing imports it.
//! - [`gateway`]: the HTTP surface. The listener and its service
//!   ([`gateway::server`]), routing ([`gateway::router`]), path checks,
//!   client access and the drop-in logon, the cached route, the
//!   pass-through, admin endpoints, rendering for a client, and the one
//!   place errors become HTTP ([`gateway::error`]). Shared state is
//!   [`gateway::app::App`].
//! - [`fleet`]: fleet mode's shared tier in Redis/Valkey: shared cache
//!   entries and fetch leases, the fleet's one EM session (sealed), client
//!   sessions and EM tasks for every replica, purges and membership;
//!   everything read back carries a MAC. The only module that knows Redis.
//! - [`em`]: Enterprise Manager as a service: the HTTP client
//!   ([`em::client`]), TLS trust ([`em::tls`]) and the pooled EM session
//!   ([`em::session`]). It knows nothing of clients.
//! - [`cache`]: keys, entries, flights and staleness, generic over what it
//!   stores; it is handed a fetch and knows no HTTP client and no EM.
//! - [`convert`]: EM's XML to EM's JSON, pure.
//! - [`ops`]: metrics, logging, the shutdown signal.
//! - [`config`]: settings from the TOML file and `EMGATE_*`, validated once
//!   into typed values.
//! - [`secret`], [`digest`]: helpers at the bottom: a string that never
//!   prints itself; SHA-256, constant-time compare, random tokens.
//! - [`allocator`]: the binary's global allocator (mimalloc); it imports
//!   nothing of the rest.
//!
//! Beside them, [`sim`] is a self-contained Enterprise Manager simulator for
//! tests, the demo and benchmarks; it imports nothing of the rest.

pub mod allocator;
pub mod cache;
pub mod cli;
pub mod config;
pub mod convert;
pub mod digest;
pub mod em;
pub mod fleet;
pub mod gateway;
pub mod ops;
pub mod secret;
pub use emgate_sim as sim;
