//! The HTTP surface.

pub mod access;
pub mod admin;
pub mod app;
pub mod clients;
pub mod error;
pub mod limit;
pub mod listen_tls;
pub mod logon;
pub mod path;
pub mod proxy;
pub mod render;
pub mod request_id;
pub mod response;
pub mod restore_points;
pub mod router;
pub mod server;
