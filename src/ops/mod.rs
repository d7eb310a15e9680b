//! Operations: what an operator sees and how the process starts and stops.
//!
//! - [`metrics`]: the Prometheus recorder and the metric names of see README, "Operations";
//! - [`history`]: the last hour in memory, for the status page;
//! - [`logging`]: the log subscriber (text or JSON lines on stderr);
//! - [`shutdown`]: the shutdown signal (SIGTERM or SIGINT);
//! - [`traces`]: OpenTelemetry traces over OTLP, when a collector is set;
//! - [`urgency`]: whether a client waits for a piece of background work.

pub mod history;
pub mod logging;
pub mod metrics;
pub mod shutdown;
pub mod traces;
pub mod urgency;
