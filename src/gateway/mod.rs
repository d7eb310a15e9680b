//! The HTTP surface: what clients see, in the order a request meets it.
//!
//! - [`server`]: start-up checks, the listener, the service around the
//!   router, the drain;
//! - [`conn`]: one connection's deadlines (first request head, idle) and
//!   what a request knows of its connection;
//! - [`request_id`]: `X-Request-Id`: the client's if well-formed, else a new one;
//! - [`context`]: what every phase of one request answers by, and its span,
//!   made only when the request does more than read memory;
//! - [`router`]: which handler answers; one log line and metrics per request;
//! - [`host`], [`target`]: the host and the `/api` target a request names,
//!   parsed and checked before anything reaches EM;
//! - [`access`], [`clients`], [`limit`], [`logon`]: who is calling (clients
//!   file, Basic/Bearer, gateway sessions, the admin token), rate limits,
//!   the drop-in logon, on their own state ([`access::AccessState`]);
//! - [`reads`]: GET/HEAD through the cache rules, or collapsed when no rule
//!   caches them, and purges, on their own state ([`reads::ReadState`]); [`restore_points`]: restore point IDs checked at the edge;
//! - [`warm`]: work before anyone asks: the `vmRestorePoints` of new
//!   restore points prefetched, in the background lane;
//! - [`proxy`]: the pass-through to EM with the pooled session, and writes;
//!   [`tasks`]: the EM tasks writes create, kept per client and followed to
//!   their end;
//! - [`admin`]: cache purges behind the admin token; [`status`]: the
//!   operators' page and its JSON;
//! - [`render`], [`response`]: EM's answer rendered for one client (JSON or
//!   XML, links to the gateway);
//! - [`error`]: every error, and the one place it becomes an HTTP answer;
//! - [`app`]: the whole state, which only the composition root (server,
//!   router) and the operator's pages see; [`reload`]: settings read again
//!   on SIGHUP or a file's change and applied through the phases' states;
//!   [`listen_tls`]: HTTPS, its certificate replaceable.
//!
//! Each module uses only those below it in `tests/layering.rs`'s table.

pub mod access;
pub mod admin;
pub mod app;
pub mod clients;
pub mod conn;
pub mod context;
pub mod error;
pub mod heads;
pub mod host;
pub mod limit;
pub mod listen_tls;
pub mod logon;
pub mod proxy;
pub mod reads;
pub mod reload;
pub mod render;
pub mod request_id;
pub mod response;
pub mod restore_points;
pub mod router;
pub mod server;
pub mod status;
pub mod target;
pub mod tasks;
pub mod warm;
