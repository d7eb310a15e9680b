//! Log set-up: tracing-subscriber with an `EnvFilter` and `text` or `json`
//! lines on stderr (stdout stays free for command output such as `demo`'s).
//!
//! Lines are formatted on the thread that logs and written by one writer
//! thread (tracing-appender's non-blocking writer): a request never waits
//! for stderr, and lines that pile up while the writer is busy leave in one
//! `write` instead of one each. At one access line per request this is what
//! keeps logging at `info` affordable (README, "Operations"). If the writer
//! falls [`QUEUED_LINES`] behind (stderr blocked by a stuck pipe), further
//! lines are dropped rather than stalling requests, and counted in
//! `emgate_log_lines_dropped_total`.

use std::io::{BufWriter, IsTerminal};
use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Lines that may wait for the writer thread before new ones are dropped.
const QUEUED_LINES: usize = 8 * 1024;

/// Bytes the writer gathers before a `write` (it also writes whenever the
/// queue is empty, so a quiet gateway's lines are never held back).
const WRITE_BUFFER: usize = 64 * 1024;

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Keeps the writer thread alive; dropping it writes what is queued (so
/// `serve` holds it until it returns, and the last lines are not lost).
#[must_use = "dropping the guard stops the log writer"]
pub struct Guard {
    _writer: Option<WorkerGuard>,
}

/// Installs the global subscriber; a second call is a no-op (tests, demo).
pub fn init(filter: &str, format: LogFormat) -> Guard {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("emgate-log")
        .finish(BufWriter::with_capacity(WRITE_BUFFER, std::io::stderr()));
    let dropped = writer.error_counter();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false)
        // Colours only for a person at a terminal, never into files or pipelines.
        .with_ansi(std::io::stderr().is_terminal());
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    match installed {
        Ok(()) => {
            let _ = DROPPED.set(dropped);
            Guard {
                _writer: Some(guard),
            }
        }
        // Another subscriber was first: this writer is never used.
        Err(_) => Guard { _writer: None },
    }
}

/// Log lines dropped because the writer thread could not keep up.
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}
