//! Temporary stub (replaced by the simulator).
#![allow(missing_docs, dead_code, unused_variables)]
use std::net::SocketAddr;
use std::time::Duration;
pub struct SimConfig {
    pub listen: SocketAddr,
    pub tls: bool,
    pub username: String,
    pub password: String,
    pub session_idle: Duration,
    pub latency: Duration,
    pub restore_points: usize,
    pub seed: u64,
}
impl Default for SimConfig {
    fn default() -> Self {
        todo!()
    }
}
pub struct Sim;
impl Sim {
    pub async fn start(cfg: SimConfig) -> std::io::Result<Sim> {
        todo!()
    }
    pub fn base_url(&self) -> String {
        todo!()
    }
    pub fn cert_sha256(&self) -> Option<String> {
        todo!()
    }
    pub fn restore_point_id(&self, index: usize) -> String {
        todo!()
    }
    pub async fn shutdown(self) {}
}
pub async fn run(cfg: SimConfig) -> std::io::Result<()> {
    todo!()
}
