//! Log set-up: tracing-subscriber with an `EnvFilter` and `text` or `json`
//! lines on stderr (stdout stays free for command output such as `demo`'s).
//!
//! Lines are formatted on the thread that logs and appended to one shared
//! buffer; a writer thread writes the buffer out when it holds
//! `WRITE_AT` bytes or `FLUSH_EVERY` after its first line, whichever
//! comes first (nginx's `access_log ... buffer= flush=`). A request never
//! waits for stderr, and the log costs a copy per line, not a `write` and a
//! thread wake-up (a queue per line, as tracing-appender has, costs a
//! wake-up of its thread per line: a quarter of a hit's CPU at `info` on a
//! busy core). If stderr stops taking lines (a stuck log shipper), the
//! buffer stops at `HELD_AT_MOST` and further lines are dropped and
//! counted in `emgate_log_lines_dropped_total` rather than stalling requests.
//!
//! States of the buffer: *empty* → (a line) *filling* → (WRITE_AT bytes, or
//! FLUSH_EVERY since the first line, or the guard dropped) *written* →
//! *empty*. While stderr is blocked the buffer stays *filling* up to
//! HELD_AT_MOST; past it lines are counted, not kept.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Bytes that make the writer thread write at once.
const WRITE_AT: usize = 32 * 1024;

/// Longest a line waits in the buffer.
const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// Bytes held while stderr does not take them; lines past it are dropped.
const HELD_AT_MOST: usize = 1024 * 1024;

/// Longest wait at exit for the last lines to be written.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// The buffer shared by every thread that logs and the writer thread.
struct Shared {
    buffer: Mutex<Vec<u8>>,
    /// Signalled when the buffer reaches [`WRITE_AT`] or on shutdown.
    full: Condvar,
    stopping: AtomicBool,
    dropped: AtomicU64,
}

impl Shared {
    /// The buffer, even after a panic elsewhere poisoned the lock (it
    /// holds whole lines only: a line is appended in one piece).
    fn buffer(&self) -> MutexGuard<'_, Vec<u8>> {
        self.buffer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What the formatter writes each line to (one `write` per line).
#[derive(Clone)]
struct Lines(Arc<Shared>);

impl Write for Lines {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut buffer = self.0.buffer();
        if buffer.len() + line.len() > HELD_AT_MOST {
            self.0.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            buffer.extend_from_slice(line);
            if buffer.len() >= WRITE_AT {
                self.0.full.notify_one();
            }
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Lines {
    type Writer = Lines;

    fn make_writer(&'a self) -> Lines {
        self.clone()
    }
}

/// Writes the buffer to stderr until the guard is dropped, then once more.
fn write_out(shared: Arc<Shared>) {
    let mut out = Vec::with_capacity(WRITE_AT * 2);
    loop {
        let stopping = {
            let mut buffer = shared.buffer();
            if buffer.len() < WRITE_AT && !shared.stopping.load(Ordering::Relaxed) {
                buffer = match shared.full.wait_timeout(buffer, FLUSH_EVERY) {
                    Ok((b, _)) => b,
                    Err(poisoned) => poisoned.into_inner().0,
                };
            }
            std::mem::swap(&mut *buffer, &mut out);
            shared.stopping.load(Ordering::Relaxed)
        };
        if !out.is_empty() {
            // Nothing to tell anybody if stderr is gone.
            let _ = std::io::stderr().lock().write_all(&out);
            out.clear();
        }
        if stopping && shared.buffer().is_empty() {
            return;
        }
    }
}

static DROPPED: OnceLock<Arc<Shared>> = OnceLock::new();

/// Keeps the writer thread alive; dropping it writes what is buffered (so
/// `serve` holds it until it returns, and the last lines are not lost).
#[must_use = "dropping the guard stops the log writer"]
pub struct Guard {
    writer: Option<(Arc<Shared>, std::thread::JoinHandle<()>)>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some((shared, thread)) = self.writer.take() {
            shared.stopping.store(true, Ordering::Relaxed);
            shared.full.notify_one();
            // Bounded: a stuck stderr must not keep the process from exiting.
            let deadline = std::time::Instant::now() + STOP_WAIT;
            while !thread.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

/// Installs the global subscriber; a second call is a no-op (tests, demo).
pub fn init(filter: &str, format: LogFormat) -> Guard {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let shared = Arc::new(Shared {
        buffer: Mutex::new(Vec::with_capacity(WRITE_AT * 2)),
        full: Condvar::new(),
        stopping: AtomicBool::new(false),
        dropped: AtomicU64::new(0),
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Lines(shared.clone()))
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
    if installed.is_err() {
        // Another subscriber was first: this writer is never used.
        return Guard { writer: None };
    }
    let _ = DROPPED.set(shared.clone());
    let writer = shared.clone();
    match std::thread::Builder::new()
        .name("emgate-log".into())
        .spawn(move || write_out(writer))
    {
        Ok(thread) => Guard {
            writer: Some((shared, thread)),
        },
        Err(e) => {
            eprintln!("emgate: cannot start the log writer ({e}); logs are dropped");
            Guard { writer: None }
        }
    }
}

/// Log lines dropped because stderr did not take them.
pub fn dropped_lines() -> u64 {
    DROPPED
        .get()
        .map_or(0, |s| s.dropped.load(Ordering::Relaxed))
}
