//! Operations: what an operator sees and how the process starts and stops.
//!
//! - [`metrics`]: the Prometheus recorder and the metric names of see README, "Operations";
//! - [`history`]: the last hour in memory, for the status page;
//! - [`logging`]: the log subscriber (text or JSON lines on stderr);
//! - [`shutdown`]: the shutdown signal (SIGTERM or SIGINT);
//! - [`traces`]: OpenTelemetry traces over OTLP, when a collector is set;
//! - [`urgency`]: whether a client waits for a piece of background work;
//! - [`locked`]: a lock taken even after a panic poisoned it.

pub mod history;
pub mod logging;
pub mod metrics;
pub mod shutdown;
pub mod traces;
pub mod urgency;

/// `mutex` locked, recovered if a panic elsewhere poisoned it. For data
/// no update leaves half made (each caller says why its data is such):
/// one panicking request must not turn every later one into an error.
pub fn locked<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
