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
//! The access line (one per request) is written straight into that buffer
//! in the same shape the formatter gives every other line, without going
//! through tracing's formatter: its visitor and `core::fmt` machinery cost
//! about a quarter of a cache hit's CPU at `info` (see BENCHMARKS.md). It
//! obeys the same filter, under its own target `emgate::access`
//! (`EMGATE_LOG=info,emgate::access=off` keeps the other lines only).
//!
//! States of the buffer: *empty* → (a line) *filling* → (WRITE_AT bytes, or
//! FLUSH_EVERY since the first line, or the guard dropped) *written* →
//! *empty*, its room back to `2 × WRITE_AT` if a stall made it grow.
//! While stderr is blocked the buffer stays *filling* up to
//! HELD_AT_MOST; past it lines are counted, not kept.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;

use crate::config::{LogFormat, TraceSettings};

/// Bytes that make the writer thread write at once: about 900 access
/// lines. Each wake-up of the writer costs the request thread a context
/// switch on a busy core; at 32 KiB they were a fifth of the log's price on
/// a hit (futex calls and switches per request, see BENCHMARKS.md). Below
/// the mark the writer wakes every `FLUSH_EVERY` anyway.
const WRITE_AT: usize = 256 * 1024;

/// Longest a line waits in the buffer.
const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// Bytes held while stderr does not take them; lines past it are dropped.
const HELD_AT_MOST: usize = 1024 * 1024;

/// Longest wait at exit for the last lines to be written.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// The buffer shared by every thread that logs and the writer thread.
struct Shared {
    buffer: Mutex<Vec<u8>>,
    /// Signalled when the buffer crosses [`WRITE_AT`] or on shutdown.
    full: Condvar,
    stopping: AtomicBool,
    dropped: AtomicU64,
}

impl Shared {
    /// An empty buffer with room for `2 × WRITE_AT` (the room the writer
    /// gives it back after a stall).
    fn new() -> Shared {
        Shared {
            buffer: Mutex::new(Vec::with_capacity(WRITE_AT * 2)),
            full: Condvar::new(),
            stopping: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        }
    }

    /// The buffer, even after a panic elsewhere poisoned the lock (it
    /// holds whole lines only: a line is appended in one piece).
    fn buffer(&self) -> MutexGuard<'_, Vec<u8>> {
        crate::ops::locked(&self.buffer)
    }

    /// Appends one whole line, or counts it as dropped past [`HELD_AT_MOST`].
    fn append(&self, line: &[u8]) {
        self.append_with(|buffer| buffer.extend_from_slice(line));
    }

    /// Appends the one whole line `write` writes at the buffer's end, or
    /// counts it as dropped (and takes it out again) past [`HELD_AT_MOST`].
    /// The access line is formatted here, in place, under the lock (about
    /// 400 instructions held, against the writer's swap only): formatted
    /// elsewhere first, it cost a second copy of its bytes and a
    /// thread-local buffer, about 90 instructions a request.
    fn append_with(&self, write: impl FnOnce(&mut Vec<u8>)) {
        let crossed = {
            let mut buffer = self.buffer();
            let before = buffer.len();
            // Full already (stderr stuck): the line is not even formatted.
            if before >= HELD_AT_MOST {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            write(&mut buffer);
            if buffer.len() > HELD_AT_MOST {
                buffer.truncate(before);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
            } else {
                before < WRITE_AT && buffer.len() >= WRITE_AT
            }
        };
        // Only the line that crosses the mark wakes the writer: a notify is
        // a syscall whether anyone waits or not, and the lines after it
        // (until the writer swaps the buffer out) would each make one for a
        // writer already woken. None is lost: the writer looks at the
        // length before it waits. The lock is released first: a writer
        // woken while it is held (on the same CPU, at once) would only
        // sleep again on the lock.
        if crossed {
            self.full.notify_one();
        }
    }
}

/// What the formatter writes each line to (one `write` per line).
#[derive(Clone)]
struct Lines(Arc<Shared>);

impl Write for Lines {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.0.append(line);
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

/// Writes the buffer to `stderr` until the guard is dropped, then once more.
fn write_out(shared: Arc<Shared>, mut stderr: Out) {
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
            stderr.write(&out);
            out.clear();
        }
        // Both buffers pass through here in turn. One that grew while this
        // thread or stderr was held up (more than its room came in before
        // a swap, up to HELD_AT_MOST) goes back to its room: kept, one
        // stall would hold up to twice HELD_AT_MOST for the process's life.
        if out.capacity() > WRITE_AT * 2 {
            out.shrink_to(WRITE_AT * 2);
        }
        if stopping && shared.buffer().is_empty() {
            return;
        }
    }
}

/// Where the writer thread puts the lines: stderr, and when stderr is a
/// regular file on Linux (`2>>emgate.log`), a busy gateway's lines go to
/// the disk around the page cache.
///
/// Why: at `info` a busy gateway writes an access line per request, about
/// 34 MB a second at 100k hits a second. Written plainly to a file, those
/// bytes stay in memory as page cache, gigabytes within minutes, and the
/// kernel writes them back in bursts: on the 2-core bench machine that
/// cost the gateway up to a third of its hits a second and tripled p99
/// during a writeback (BENCHMARKS.md, seventeenth steps). Written with
/// `O_DIRECT`, the disk takes them from the writer's own memory: there is
/// no page cache to fill, copy into or write back, and the writer thread
/// sleeps while the disk writes instead of holding the core. On a kernel
/// that does not preempt itself, a cached write of 256 KiB (plain, or
/// with `RWF_DONTCACHE`) held a one-core gateway's core for about 170 us
/// (BENCHMARKS.md, nineteenth steps).
///
/// How: `O_DIRECT` takes whole blocks, from block-aligned memory, at a
/// block-aligned place in the file; a batch of lines is none of these. So
/// a write made direct goes in three parts: plainly,
/// the bytes up to the file's next block boundary; direct, the whole
/// blocks after them, copied into an aligned [`Stage`]; plainly, the rest.
/// Every write still ends where a line ends, so the file holds whole
/// lines between writes, as with one plain write. The plain parts leave a
/// page in the page cache per write, dropped once on disk
/// ([`DROP_EVERY`]).
///
/// `O_DIRECT` is set on stderr's own open file (shared with whoever opened
/// it) for the direct part only and taken off after, while this holds
/// stderr's lock: an `eprintln!` of this process never meets it, nor a
/// panic's message (which Rust writes without that lock: the hook
/// [`holding_stderr`] takes it first).
///
/// When: only writes of at least [`DIRECT_FROM`] bytes (a busy
/// gateway's) and not past the buffers' room (a writer that fell behind
/// catches up through the page cache: [`goes_direct`]), and only until
/// the open file first refuses the flag (tmpfs before Linux 6.6, a file
/// system without direct I/O; then plain writes for good). A direct write
/// the kernel does not take (the file's end moved off a block boundary:
/// another process appending to the same file) is written plainly. A quiet gateway's flushes, a few lines
/// every `FLUSH_EVERY`, are written plainly: the page cache merges them
/// into one disk write every few seconds. A pipe (a container's stderr, a
/// log shipper), a terminal or `/dev/null` is written plainly: there is no
/// page cache to spare.
///
/// Every write holds stderr's lock, as `std::io::stderr()` would, so a
/// line another thread prints with `eprintln!` is never cut into a log
/// line on a pipe.
struct Out {
    /// A duplicate of stderr's descriptor (the same open file: one
    /// position, appending if stderr appends); `None` if it could not be
    /// made, and then lines go through `std::io::stderr()`.
    file: Option<std::fs::File>,
    /// Room for the direct part of a write while large writes go around
    /// the page cache (never on other systems than Linux).
    direct: Option<Stage>,
}

/// The smallest write made direct: four pages, so a busy gateway's
/// writes are (up to [`WRITE_AT`]) and a quiet one's 50 ms flushes are not
/// (under about 1,000 access lines a second).
const DIRECT_FROM: usize = 16 * 1024;

/// Whether a batch of `len` bytes is written around the page cache: a
/// busy gateway's ([`DIRECT_FROM`] or more), unless the writer fell behind.
/// A direct write waits for the disk, and lines that come meanwhile wait
/// in the buffer (up to `HELD_AT_MOST`, then they are dropped); a batch
/// past the buffers' room (`2 × WRITE_AT`) says the last write or the
/// writer thread was held up, and such a batch goes through the page
/// cache, which takes it without waiting for the disk, until batches are
/// back to their size.
fn goes_direct(len: usize) -> bool {
    (DIRECT_FROM..=WRITE_AT * 2).contains(&len)
}

/// The block a direct write is cut to and aligned on: a page, which is a
/// multiple of every disk's logical block this runs on (512 or 4096 bytes).
const BLOCK: usize = 4096;

/// The most one direct write takes: a busy gateway's whole batch
/// ([`WRITE_AT`] and the lines that came before the writer woke).
const STAGE: usize = WRITE_AT + 64 * 1024;

/// Bytes of large writes between two times the writer asks the kernel to
/// drop the plain parts' pages (`POSIX_FADV_DONTNEED` over the file: clean
/// pages go; the dirty ones are written, and go the next time), so a few
/// dozen pages of the log at most stay in memory.
const DROP_EVERY: usize = 4 * 1024 * 1024;

/// Block-aligned memory for the direct part of a write: the disk reads it
/// from here.
struct Stage {
    /// `STAGE + BLOCK` bytes, never resized (so never moved); allocated
    /// zeroed, so its pages take memory only once used.
    bytes: Vec<u8>,
    /// Where the aligned room starts in `bytes` (under `BLOCK`).
    start: usize,
    /// Bytes written direct since the last [`DROP_EVERY`].
    since_drop: usize,
}

impl Stage {
    fn new() -> Option<Stage> {
        let bytes = vec![0u8; STAGE + BLOCK];
        let start = bytes.as_ptr().align_offset(BLOCK);
        (start < BLOCK).then_some(Stage {
            bytes,
            start,
            since_drop: 0,
        })
    }

    /// `part` (at most [`STAGE`] bytes) copied to the aligned room.
    fn hold(&mut self, part: &[u8]) -> &[u8] {
        let room = &mut self.bytes[self.start..self.start + part.len()];
        room.copy_from_slice(part);
        room
    }
}

impl Out {
    fn stderr() -> Out {
        use std::os::fd::AsFd as _;
        let file = std::io::stderr().as_fd().try_clone_to_owned().ok();
        Out::to(file.map(std::fs::File::from))
    }

    fn to(file: Option<std::fs::File>) -> Out {
        let regular = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .is_some_and(|m| m.file_type().is_file());
        Out {
            file,
            direct: match regular && cfg!(target_os = "linux") {
                true => Stage::new(),
                false => None,
            },
        }
    }

    /// Writes all of `bytes`, or as much as stderr takes: nothing to tell
    /// anybody if stderr is gone.
    fn write(&mut self, bytes: &[u8]) {
        let mut stderr = std::io::stderr().lock();
        let Some(file) = &mut self.file else {
            let _ = stderr.write_all(bytes);
            return;
        };
        #[cfg(target_os = "linux")]
        let bytes = match &mut self.direct {
            Some(stage) if goes_direct(bytes.len()) => {
                match direct::write_all(file, stage, bytes) {
                    Ok(()) => return,
                    Err(direct::Refused { written }) => {
                        self.direct = None;
                        &bytes[written..]
                    }
                }
            }
            _ => bytes,
        };
        let _ = file.write_all(bytes);
    }
}

/// Writes whose whole blocks go to the disk around the page cache
/// (`O_DIRECT`), where the kernel and the file system allow it.
#[cfg(target_os = "linux")]
mod direct {
    use std::io::{Seek as _, Write as _};
    use std::os::fd::AsRawFd as _;

    use super::{Stage, BLOCK, DROP_EVERY, STAGE};

    /// The open file does not take `O_DIRECT` (the file system has no
    /// direct I/O); `written` bytes were written before it said so.
    #[derive(Debug, PartialEq, Eq)]
    pub(super) struct Refused {
        pub(super) written: usize,
    }

    /// How the direct part of a write ended, short of all written.
    #[derive(Debug, PartialEq, Eq)]
    pub(super) enum Short {
        /// The open file does not take `O_DIRECT`: plain writes from here
        /// on.
        Refused,
        /// The write was not taken direct after this many bytes
        /// (`EINVAL`: the file's end moved off a block boundary, another
        /// writer appending meanwhile): the rest goes plainly this time.
        NotTaken(usize),
        /// Another error (a full disk): the rest is dropped, as a plain
        /// write's error drops it.
        Failed,
    }

    /// Writes all of `bytes` where the file's next write goes (its
    /// position, or its end if it appends). `Err` only when the open file
    /// does not take `O_DIRECT`; any other error drops the rest of
    /// `bytes`, as a plain write's error does, and the next call tries
    /// again.
    pub(super) fn write_all(
        file: &mut std::fs::File,
        stage: &mut Stage,
        bytes: &[u8],
    ) -> Result<(), Refused> {
        let fd = file.as_raw_fd();
        // SAFETY: F_GETFL only reads the flags of `fd`, open for as long
        // as `file` is borrowed.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(Refused { written: 0 });
        }
        let end = match flags & libc::O_APPEND {
            0 => file.stream_position(),
            _ => file.metadata().map(|m| m.len()),
        };
        let Ok(end) = end else {
            return Err(Refused { written: 0 });
        };
        // Up to the file's next block boundary, plainly.
        let past_boundary = usize::try_from(end % BLOCK as u64).unwrap_or(0);
        let mut written = ((BLOCK - past_boundary) % BLOCK).min(bytes.len());
        if file.write_all(&bytes[..written]).is_err() {
            return Ok(());
        }
        // Whole blocks, direct, a stage at a time.
        while bytes.len() - written >= BLOCK {
            let n = (bytes.len() - written).min(STAGE) / BLOCK * BLOCK;
            let part = stage.hold(&bytes[written..written + n]);
            match around_the_cache(file, flags, part) {
                Ok(()) => written += n,
                Err(Short::Refused) => return Err(Refused { written }),
                Err(Short::NotTaken(done)) => {
                    let _ = file.write_all(&bytes[written + done..]);
                    return Ok(());
                }
                Err(Short::Failed) => return Ok(()),
            }
        }
        // The last part of a block, plainly.
        let _ = file.write_all(&bytes[written..]);
        stage.since_drop += bytes.len();
        if stage.since_drop >= DROP_EVERY {
            stage.since_drop = 0;
            // SAFETY: advice on the whole of `fd`'s file; no memory passed.
            unsafe { libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED) };
        }
        Ok(())
    }

    /// Writes `part` (whole blocks, block-aligned memory, at a block
    /// boundary of the file) with `O_DIRECT` set on the open file for the
    /// time of the write; `flags` are the file's own, put back after.
    pub(super) fn around_the_cache(
        file: &mut std::fs::File,
        flags: i32,
        part: &[u8],
    ) -> Result<(), Short> {
        let fd = file.as_raw_fd();
        // SAFETY: F_SETFL only sets the status flags of `fd`, open for as
        // long as `file` is borrowed.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_DIRECT) } < 0 {
            return Err(Short::Refused);
        }
        let mut done = 0;
        let result = loop {
            if done == part.len() {
                break Ok(());
            }
            match file.write(&part[done..]) {
                Ok(0) => break Err(Short::Failed),
                Ok(n) => done += n,
                Err(e) => match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EINVAL | libc::EOPNOTSUPP) => break Err(Short::NotTaken(done)),
                    _ => break Err(Short::Failed),
                },
            }
        };
        // SAFETY: as above; the flags `fd` had before.
        unsafe { libc::fcntl(fd, libc::F_SETFL, flags) };
        result
    }
}

/// The buffer and format of the installed subscriber, for the access line
/// (and the count of dropped lines); unset when another subscriber was
/// installed first.
static INSTALLED: OnceLock<(Arc<Shared>, LogFormat)> = OnceLock::new();

/// Keeps the writer thread alive; dropping it writes what is buffered (so
/// `serve` holds it until it returns, and the last lines are not lost).
#[must_use = "dropping the guard stops the log writer"]
pub struct Guard {
    writer: Option<(Arc<Shared>, std::thread::JoinHandle<()>)>,
    /// Sends the spans still queued when dropped (after the last line).
    _traces: Option<crate::ops::traces::Provider>,
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

/// Replaces the installed subscriber's filter (a reload).
type SetFilter = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

static FILTER: OnceLock<SetFilter> = OnceLock::new();

/// `EMGATE_LOG` parsed, or why it cannot be (a reload checks it first).
pub fn parse_filter(filter: &str) -> Result<EnvFilter, String> {
    EnvFilter::try_new(filter).map_err(|e| e.to_string())
}

/// Makes `filter` the log filter from now on (a reload); an error if it
/// does not parse or this process's subscriber is not emgate's.
pub fn set_filter(filter: &str) -> Result<(), String> {
    let parsed = parse_filter(filter)?;
    match FILTER.get() {
        Some(set) => {
            set(parsed)?;
            ACCESS_ON.store(access_on(filter), Ordering::Relaxed);
            Ok(())
        }
        None => Err("the log subscriber is not emgate's".into()),
    }
}

/// The layer that makes OpenTelemetry spans of emgate's own spans (at
/// `info`, whatever the log filter), and of nothing else. A static
/// filter by target: a dynamic one (`filter_fn`) made the layer miss
/// most spans of a callsite after its first (per-layer filter state),
/// so the lines logged inside a span go with it as span events (lines
/// never hold a secret).
fn spans<S>(tracer: opentelemetry_sdk::trace::Tracer) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    // Not the access line's target: whether it is written is the log
    // filter's call alone (see [`ACCESS_ON`]).
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target("emgate", tracing::Level::INFO)
                .with_target(
                    "emgate::access",
                    tracing_subscriber::filter::LevelFilter::OFF,
                ),
        )
}

/// Installs the global subscriber; a second call is a no-op (tests, demo).
/// With `traces`, emgate's spans also go to the OpenTelemetry collector
/// ([`crate::ops::traces`]) whatever the log filter says, with the lines
/// logged inside them as span events. A collector that cannot be set up
/// is reported on stderr and the gateway runs without traces.
pub fn init(filter: &str, format: LogFormat, traces: Option<&TraceSettings>) -> Guard {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    ACCESS_ON.store(access_on(filter), Ordering::Relaxed);
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let shared = Arc::new(Shared::new());
    let (provider, tracer) = match traces.map(crate::ops::traces::start) {
        Some(Ok((provider, tracer))) => (Some(provider), Some(tracer)),
        Some(Err(e)) => {
            eprintln!("emgate: traces are off: {e}");
            (None, None)
        }
        None => (None, None),
    };
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(Lines(shared.clone()))
        .with_target(false)
        // Colours only for a person at a terminal, never into files or pipelines.
        .with_ansi(std::io::stderr().is_terminal());
    // Four stacks rather than an `Option` layer: a `None` layer claims
    // every callsite, which would make every `debug!` and `trace!` of every
    // crate an event to filter out, on every request.
    let registry = tracing_subscriber::registry();
    let installed = match (format, tracer) {
        (LogFormat::Text, None) => registry.with(lines.with_filter(filter)).try_init(),
        (LogFormat::Text, Some(t)) => registry
            .with(lines.with_filter(filter))
            .with(spans(t))
            .try_init(),
        (LogFormat::Json, tracer) => {
            let lines = lines
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .with_filter(filter);
            match tracer {
                None => registry.with(lines).try_init(),
                Some(t) => registry.with(lines).with(spans(t)).try_init(),
            }
        }
    };
    if installed.is_ok() {
        if provider.is_some() {
            crate::ops::traces::enable();
        }
        let set: SetFilter = Box::new(move |f| handle.reload(f).map_err(|e| e.to_string()));
        let _ = FILTER.set(set);
    }
    if installed.is_err() {
        // Another subscriber was first: this writer is never used.
        return Guard {
            writer: None,
            _traces: provider,
        };
    }
    let _ = INSTALLED.set((shared.clone(), format));
    let writer = shared.clone();
    let out = Out::stderr();
    if out.direct.is_some() {
        let rust_own = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| holding_stderr(|| rust_own(info))));
    }
    match std::thread::Builder::new()
        .name("emgate-log".into())
        .spawn(move || write_out(writer, out))
    {
        Ok(thread) => Guard {
            writer: Some((shared, thread)),
            _traces: provider,
        },
        Err(e) => {
            eprintln!("emgate: cannot start the log writer ({e}); logs are dropped");
            Guard {
                writer: None,
                _traces: provider,
            }
        }
    }
}

/// Runs `write` while holding stderr's lock; the panic hook's way to
/// write. Rust's own hook writes a panic's message straight to stderr
/// without the lock; when stderr is a file the log writer writes around
/// the page cache ([`Out`]), that could land in the moment the open file
/// has `O_DIRECT` set, and the kernel would refuse it: the one line that
/// says why a request failed, lost. With the lock, the message waits for
/// that moment to end (a disk write at most). Only then: on a pipe that
/// stopped taking lines, the writer holds the lock while it waits, and a
/// panic there keeps Rust's own hook as before.
fn holding_stderr<R>(write: impl FnOnce() -> R) -> R {
    let _stderr = std::io::stderr().lock();
    write()
}

/// Log lines dropped because stderr did not take them.
pub fn dropped_lines() -> u64 {
    INSTALLED
        .get()
        .map_or(0, |(s, _)| s.dropped.load(Ordering::Relaxed))
}

/// A field of the access line that may hold any text, and whether it is
/// known to be plain ([`is_plain`]), so the line writes it without a look
/// at each byte.
#[derive(Debug, Clone, Copy)]
pub enum Text<'a> {
    /// Known plain (the gateway's own labels, a path checked once).
    Plain(&'a str),
    /// Not known: quoted as each format quotes any text.
    Any(&'a str),
}

impl<'a> Text<'a> {
    /// The text.
    pub fn as_str(self) -> &'a str {
        match self {
            Text::Plain(s) | Text::Any(s) => s,
        }
    }
}

/// What the one line per request says.
pub struct AccessLine<'a> {
    /// The request's method.
    pub method: &'a str,
    /// Its path (without the query): plain when its target was found so
    /// once, when it was first resolved.
    pub path: Text<'a>,
    /// The route template that answered it: a label made by code or a
    /// rule's template, plain text by construction (a template holds only
    /// letters, digits, `/{}*-._~`), so the text line writes it unchecked.
    pub route: &'static str,
    /// The status answered.
    pub status: u16,
    /// From the request's head to its answer's head.
    pub latency: Duration,
    /// When its answer was made: the line's time.
    pub at: Instant,
    /// The client's name, `-` for none: plain when it is one of the
    /// gateway's own labels.
    pub client: Text<'a>,
    /// The cache result (`X-Cache`), `-` for none: one of the gateway's
    /// own labels, written unchecked as `route`.
    pub cache: &'static str,
    /// The request id (kept or made at the edge: `A-Za-z0-9._:-` only),
    /// or `-`: its bytes, written as they are (no UTF-8 check per line).
    pub request_id: &'a [u8],
}

/// Whether the log filter lets the access line (`emgate::access` at
/// `info`) through, worked out from the filter's text when it is set (at
/// start and by a reload) rather than asked of the subscriber per request:
/// `enabled!` with per-layer filters leaves each filter's answer in a
/// thread's filter state for an event that never comes, and the next span
/// on that thread would then be missed by the traces layer (which never
/// takes the access line). A filter the simpler `Targets` syntax cannot
/// read (span directives) writes it.
static ACCESS_ON: AtomicBool = AtomicBool::new(true);

fn access_on(filter: &str) -> bool {
    filter
        .parse::<tracing_subscriber::filter::Targets>()
        .map_or(true, |t| {
            t.would_enable("emgate::access", &tracing::Level::INFO)
        })
}

/// Logs the access line, if the filter lets `emgate::access` at `info` through.
pub fn access(line: &AccessLine<'_>) {
    let Some((shared, format)) = INSTALLED.get() else {
        // Another subscriber (a test's, an embedding program's): it formats.
        through_tracing(line);
        return;
    };
    if !ACCESS_ON.load(Ordering::Relaxed) {
        return;
    }
    // The same rule as every other line: whole, or counted as dropped.
    shared.append_with(|out| match format {
        LogFormat::Text => text_line(out, line),
        LogFormat::Json => json_line(out, line),
    });
}

/// The access line as a tracing event, for a subscriber that is not
/// emgate's; the line emgate writes itself is this event as
/// tracing-subscriber's formatters write it (tested below).
fn through_tracing(line: &AccessLine<'_>) {
    tracing::info!(
        target: "emgate::access",
        method = %line.method,
        path = line.path.as_str(),
        route = line.route,
        status = line.status,
        latency_ms = line.latency.as_secs_f64() * 1000.0,
        client = line.client.as_str(),
        cache = line.cache,
        request_id = std::str::from_utf8(line.request_id).unwrap_or("-"),
        "request"
    );
}

thread_local! {
    /// The last second formatted, and its `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
    /// A wall-clock reading (microseconds since 1970) and the instant it
    /// was taken at (see [`wall_micros`]).
    static WALL: std::cell::Cell<Option<(Instant, u64)>> = const { std::cell::Cell::new(None) };
}

/// How long a thread's wall-clock reading stands for its access lines.
const WALL_READ_EVERY: Duration = Duration::from_secs(1);

/// Microseconds since 1970 at `at`: a wall-clock reading taken at most
/// [`WALL_READ_EVERY`] before (per thread), plus the monotonic time since.
/// An access line is stamped with the moment its answer was made, which
/// the router reads anyway, instead of reading the wall clock again and
/// subtracting 1970 from it (about 70 instructions a line). A step of the
/// wall clock shows within a second.
#[inline]
fn wall_micros(at: Instant) -> u64 {
    if let Some((then, micros)) = WALL.get() {
        if let Some(since) = at.checked_duration_since(then) {
            if since < WALL_READ_EVERY {
                // Under a second: the microseconds fit in any integer.
                return micros + u64::from(since.subsec_micros());
            }
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let micros = u64::try_from(now.as_micros()).unwrap_or(u64::MAX);
    WALL.set(Some((at, micros)));
    micros
}

/// `2026-12-04T05:48:36.156932Z` for `micros` since 1970, as
/// tracing-subscriber writes its time: the date is formatted once per
/// second per thread, the microseconds as six digits of fixed width, two at
/// a time (an integer formatter, its zero padding and their three copies
/// cost every line about 50 instructions more).
#[inline]
fn timestamp(out: &mut Vec<u8>, micros: u64) {
    let (secs, sub) = (micros / 1_000_000, micros % 1_000_000);
    let (second, mut date) = SECOND.get();
    if second != secs {
        let then = std::time::UNIX_EPOCH + Duration::from_secs(secs);
        let full = humantime::format_rfc3339_seconds(then).to_string();
        date.copy_from_slice(&full.as_bytes()[..19]);
        SECOND.set((secs, date));
    }
    out.extend_from_slice(&date);
    // Below a million: each pair below 100.
    let (high, low) = (sub / 10_000, sub % 10_000);
    let [a, b] = pair(high);
    let [c, d] = pair(low / 100);
    let [e, f] = pair(low % 100);
    out.extend_from_slice(&[b'.', a, b, c, d, e, f, b'Z']);
}

/// The two decimal digits of `n % 100`.
#[inline]
fn pair(n: u64) -> [u8; 2] {
    let n = (n % 100) as u8;
    [b'0' + n / 10, b'0' + n % 10]
}

/// The three decimal digits of `n % 1000`.
#[inline]
fn three(n: u64) -> [u8; 3] {
    let n = n % 1000;
    let [tens, ones] = pair(n);
    // Below 10: a digit.
    [b'0' + (n / 100) as u8, tens, ones]
}

/// Milliseconds to the microsecond (`0.011`, `12.305`): nanoseconds would be
/// noise in a log. Under a second (nearly every line), the digits two at a
/// time into one copy of constant length; longer, the microseconds
/// formatted once and the point put in.
#[inline]
fn millis(out: &mut Vec<u8>, latency: Duration) {
    // In u64 (585,000 years of microseconds): a u128 division is a
    // library call on every line.
    let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    if micros < 1_000_000 {
        let (ms, frac) = (micros / 1000, micros % 1000);
        let [f0, f1, f2] = three(frac);
        let [m0, m1, m2] = three(ms);
        match ms {
            0..=9 => out.extend_from_slice(&[m2, b'.', f0, f1, f2]),
            10..=99 => out.extend_from_slice(&[m1, m2, b'.', f0, f1, f2]),
            _ => out.extend_from_slice(&[m0, m1, m2, b'.', f0, f1, f2]),
        }
        return;
    }
    let mut n = itoa::Buffer::new();
    let digits = n.format(micros).as_bytes();
    // A second or more: at least seven digits.
    let point = digits.len() - 3;
    out.extend_from_slice(&digits[..point]);
    out.push(b'.');
    out.extend_from_slice(&digits[point..]);
}

/// A status code: three digits (every `http::StatusCode` is 100 to 999)
/// written as they are, any other number as a number.
#[inline]
fn status(out: &mut Vec<u8>, status: u16) {
    if (100..1000).contains(&status) {
        out.extend_from_slice(&three(u64::from(status)));
    } else {
        out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    }
}

/// Printable ASCII or a space, but no quote or backslash (text that both
/// formats quote as it is): checked on
/// every byte without stopping early, which the compiler turns into vector
/// instructions (paths are 30 to 100 bytes, on every access line; about
/// two instructions a byte. Blocks of 16 bytes made it slower: the
/// compiler then vectorised across blocks).
pub fn is_plain(s: &str) -> bool {
    s.bytes().fold(true, |ok, b| {
        ok & (b' '..=b'~').contains(&b) & (b != b'"') & (b != b'\\')
    })
}

/// A string as the text format quotes it (Rust's `Debug`, as tracing's
/// formatter writes a `&str` field); plain bytes copied as they are.
#[inline(never)]
fn quoted(out: &mut Vec<u8>, s: &str) {
    if is_plain(s) {
        quoted_plain(out, s.as_bytes());
    } else {
        let _ = write!(out, "{s:?}");
    }
}

/// A field plain by construction, quoted without a look at each byte:
/// the gateway's labels (route templates, cache results), request ids
/// (`A-Za-z0-9._:-` or `-`, see `gateway::request_id`) and paths checked
/// once when their target was first resolved. Plain text is quoted the same
/// by both formats (JSON escapes only quotes, backslashes and control
/// characters). Checked in debug builds and by the tests.
fn quoted_plain(out: &mut Vec<u8>, s: &[u8]) {
    debug_assert!(std::str::from_utf8(s).is_ok_and(is_plain), "{s:?}");
    out.push(b'"');
    out.extend_from_slice(s);
    out.push(b'"');
}

/// A [`Text`] field as the text format quotes it.
#[inline]
fn text_field(out: &mut Vec<u8>, t: Text<'_>) {
    match t {
        Text::Plain(s) => quoted_plain(out, s.as_bytes()),
        Text::Any(s) => quoted(out, s),
    }
}

/// A [`Text`] field as a JSON string.
#[inline]
fn json_field(out: &mut Vec<u8>, t: Text<'_>) {
    match t {
        Text::Plain(s) => quoted_plain(out, s.as_bytes()),
        Text::Any(s) => json_string(out, s),
    }
}

/// Any text as a JSON string (serde_json's escaping).
fn json_string(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

/// The text line, as tracing-subscriber's full format writes an event with
/// these fields inside the request's span. Written out field by field
/// rather than by walking a table of names: the names are then constants the
/// compiler merges into the text around them (one copy each instead of a
/// call per name, a third of the line's cost on every hit); the test
/// below holds it to tracing's own formatter.
fn text_line(out: &mut Vec<u8>, l: &AccessLine<'_>) {
    timestamp(out, wall_micros(l.at));
    out.extend_from_slice(b"  INFO request{request_id=");
    out.extend_from_slice(l.request_id);
    out.extend_from_slice(b"}: request method=");
    out.extend_from_slice(l.method.as_bytes());
    out.extend_from_slice(b" path=");
    text_field(out, l.path);
    out.extend_from_slice(b" route=");
    quoted_plain(out, l.route.as_bytes());
    out.extend_from_slice(b" status=");
    status(out, l.status);
    out.extend_from_slice(b" latency_ms=");
    millis(out, l.latency);
    out.extend_from_slice(b" client=");
    text_field(out, l.client);
    out.extend_from_slice(b" cache=");
    quoted_plain(out, l.cache.as_bytes());
    out.extend_from_slice(b" request_id=");
    quoted_plain(out, l.request_id);
    out.push(b'\n');
}

/// The JSON line, as tracing-subscriber's JSON format writes it (flattened
/// fields and the current span); strings escaped by serde_json. Field by
/// field, as the text line (the test below holds it to tracing's).
fn json_line(out: &mut Vec<u8>, l: &AccessLine<'_>) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(out, wall_micros(l.at));
    out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\",\"method\":");
    json_string(out, l.method);
    out.extend_from_slice(b",\"path\":");
    json_field(out, l.path);
    out.extend_from_slice(b",\"route\":");
    quoted_plain(out, l.route.as_bytes());
    out.extend_from_slice(b",\"status\":");
    status(out, l.status);
    out.extend_from_slice(b",\"latency_ms\":");
    millis(out, l.latency);
    out.extend_from_slice(b",\"client\":");
    json_field(out, l.client);
    out.extend_from_slice(b",\"cache\":");
    quoted_plain(out, l.cache.as_bytes());
    out.extend_from_slice(b",\"request_id\":");
    quoted_plain(out, l.request_id);
    out.extend_from_slice(b",\"span\":{\"request_id\":");
    quoted_plain(out, l.request_id);
    out.extend_from_slice(b",\"name\":\"request\"}}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic's message is written once the log writer lets go of
    /// stderr (the end of a direct write), never in the middle.
    #[test]
    fn a_panic_message_waits_for_stderr_to_be_let_go() {
        let (held, released) = std::sync::mpsc::channel();
        let writer = std::thread::spawn(move || {
            let _stderr = std::io::stderr().lock();
            held.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(200));
            Instant::now()
        });
        released.recv().unwrap();
        let written = holding_stderr(Instant::now);
        let let_go = writer.join().unwrap();
        assert!(written >= let_go, "written while stderr was held");
    }

    /// What tracing-subscriber's full text format writes for the access
    /// line's event inside the request's span, after the time.
    fn as_tracing_writes_it(l: &AccessLine<'_>, format: LogFormat) -> String {
        #[derive(Clone, Default)]
        struct Capture(Arc<Mutex<Vec<u8>>>);
        impl Write for Capture {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let capture = Capture::default();
        let writer = capture.clone();
        // As `init` sets the formatter up.
        let fmt = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_target(false);
        let event = || {
            // As `Ctx::span` makes it.
            let id = std::str::from_utf8(l.request_id).unwrap();
            let span = tracing::info_span!("request", request_id = %id);
            let _inside = span.enter();
            through_tracing(l);
        };
        match format {
            LogFormat::Text => tracing::subscriber::with_default(fmt.finish(), event),
            LogFormat::Json => {
                let json = fmt
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false);
                tracing::subscriber::with_default(json.finish(), event)
            }
        }
        let line = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        line
    }

    fn lines() -> [AccessLine<'static>; 4] {
        [
            AccessLine {
                method: "GET",
                path: Text::Any("/api/restorePoints/0f1e/vmRestorePoints"),
                route: "/api/restorePoints/{id}/vmRestorePoints",
                status: 200,
                latency: Duration::from_micros(12_305),
                at: Instant::now(),
                client: Text::Any("dashboards"),
                cache: "HIT",
                request_id: b"7f3a-1",
            },
            AccessLine {
                method: "DELETE",
                path: Text::Any("/api/x\"y\\z\u{7f}é"),
                route: "/api/{other}",
                status: 503,
                // Not 1,250: the line keeps three decimals (`1.250`) where
                // an `f64` drops the zero; both read as the same number.
                latency: Duration::from_micros(1_251),
                at: Instant::now(),
                client: Text::Any("a\"b"),
                cache: "-",
                request_id: b"-",
            },
            // A path found plain when its target was resolved, under a millisecond.
            AccessLine {
                method: "GET",
                path: Text::Any("/api/query?type=Job&filter=Name==\"x\""),
                route: "/api/query",
                status: 200,
                latency: Duration::from_micros(11),
                at: Instant::now(),
                client: Text::Plain("~anonymous"),
                cache: "MISS",
                request_id: b"0123456789abcdef0123456789abcdef",
            },
            AccessLine {
                method: "HEAD",
                path: Text::Plain("/api/backupServers/a b"),
                route: "/api/backupServers/{id}",
                status: 304,
                latency: Duration::from_micros(123_456_789),
                at: Instant::now(),
                client: Text::Plain("-"),
                cache: "STALE",
                request_id: b"abc-1.2_3:4",
            },
        ]
    }

    /// A line is kept whole or not at all: one that would pass the limit
    /// is taken out again, and once the buffer is full nothing is written;
    /// each is counted as dropped.
    #[test]
    fn a_line_past_the_limit_is_dropped_whole_and_counted() {
        let shared = Shared::new();
        let line = vec![b'x'; 1000];
        while shared.buffer().len() + line.len() <= HELD_AT_MOST {
            shared.append(&line);
        }
        let kept = shared.buffer().len();
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 0);
        // Would pass the limit: taken out again.
        shared.append(&line);
        assert_eq!(shared.buffer().len(), kept);
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 1);
        // Fits exactly; then the buffer is full and nothing is formatted.
        let rest = vec![b'y'; HELD_AT_MOST - kept];
        shared.append(&rest);
        assert_eq!(shared.buffer().len(), HELD_AT_MOST);
        let mut formatted = false;
        shared.append_with(|_| formatted = true);
        assert!(!formatted);
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 2);
        assert!(shared.buffer().ends_with(&rest));
    }

    /// After a stall (lines gathered past the buffer's room before the
    /// writer came round), the writer writes them all and the buffers go
    /// back to their room: a stall does not keep its memory.
    #[test]
    fn a_buffer_grown_in_a_stall_goes_back_to_its_room_once_written() {
        let shared = Arc::new(Shared::new());
        // The writer held up: nearly HELD_AT_MOST gathered meanwhile.
        let line = format!("{}\n", "x".repeat(299));
        let mut expected = Vec::new();
        while shared.buffer().len() + line.len() <= HELD_AT_MOST {
            shared.append(line.as_bytes());
            expected.extend_from_slice(line.as_bytes());
        }
        assert!(shared.buffer().capacity() > WRITE_AT * 2);
        let path = std::env::temp_dir().join(format!("emgate-log-stall-{}", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        let writer = {
            let shared = shared.clone();
            std::thread::spawn(move || write_out(shared, Out::to(Some(file))))
        };
        // Written at once (past WRITE_AT).
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&path).map_or(0, |m| m.len()) < expected.len() as u64 {
            assert!(
                Instant::now() < deadline,
                "the stalled lines were not written"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // The buffers take turns in the shared place, one per flush:
        // looked at over several flushes, so both are seen.
        let mut room = 0;
        for _ in 0..12 {
            std::thread::sleep(FLUSH_EVERY / 2);
            room = room.max(shared.buffer().capacity());
        }
        shared.stopping.store(true, Ordering::Relaxed);
        shared.full.notify_one();
        writer.join().unwrap();
        let written = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(written == expected, "lines lost or reordered");
        assert!(
            room <= WRITE_AT * 2,
            "the buffer kept {room} bytes of room after the stall"
        );
    }

    #[test]
    fn the_time_is_written_to_the_microsecond_in_utc() {
        for (micros, text) in [
            (1_796_363_316_156_932, "2026-12-04T05:48:36.156932Z"),
            (7, "1970-01-01T00:00:00.000007Z"),
            // The same second again (its date kept), then the next.
            (1_796_363_316_000_001, "2026-12-04T05:48:36.000001Z"),
            (1_796_363_317_999_999, "2026-12-04T05:48:37.999999Z"),
            // Each pair of digits in its place.
            (1_796_363_317_010_203, "2026-12-04T05:48:37.010203Z"),
            (1_796_363_317_102_030, "2026-12-04T05:48:37.102030Z"),
        ] {
            let mut out = Vec::new();
            timestamp(&mut out, micros);
            assert_eq!(String::from_utf8(out).unwrap(), text);
        }
    }

    #[test]
    fn a_line_is_stamped_with_the_wall_clock_at_its_instant() {
        let wall = || {
            let since = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            since.as_micros() as u64
        };
        let before = wall();
        let first = wall_micros(Instant::now());
        // Read again from the thread's reading, a moment later.
        std::thread::sleep(Duration::from_millis(20));
        let later = wall_micros(Instant::now());
        let after = wall();
        assert!(before <= first && first <= later && later <= after + 1_000);
        assert!(later - first >= 20_000, "{first} {later}");
        // An instant before the reading, and one past a second after it: read anew.
        let past = Instant::now() - Duration::from_millis(1);
        assert!(wall_micros(past) <= wall() + 1_000);
        let next = Instant::now() + WALL_READ_EVERY + Duration::from_millis(5);
        let stamped = wall_micros(next);
        assert!(stamped >= before && stamped <= wall() + 1_000);
    }

    #[test]
    fn latency_is_written_in_milliseconds_with_three_decimals() {
        for (micros, text) in [
            (0, "0.000"),
            (1, "0.001"),
            (11, "0.011"),
            (999, "0.999"),
            (1_000, "1.000"),
            (9_999, "9.999"),
            (12_305, "12.305"),
            (99_999, "99.999"),
            (100_000, "100.000"),
            (999_999, "999.999"),
            // A second and more: the longer way.
            (1_000_000, "1000.000"),
            (123_456_789, "123456.789"),
            (u64::MAX, "18446744073709551.615"),
        ] {
            let mut out = Vec::new();
            millis(&mut out, Duration::from_micros(micros));
            assert_eq!(String::from_utf8(out).unwrap(), text, "{micros}");
        }
    }

    #[test]
    fn the_json_access_line_is_the_line_tracings_formatter_writes() {
        for l in &lines() {
            let mut ours = Vec::new();
            json_line(&mut ours, l);
            let parse = |b: &[u8]| {
                let mut v: serde_json::Value = serde_json::from_slice(b).unwrap();
                let time = v.as_object_mut().unwrap().remove("timestamp");
                (v, time.is_some())
            };
            let (ours_v, timed) = parse(&ours);
            assert!(timed && ours.ends_with(b"}\n"));
            let theirs = as_tracing_writes_it(l, LogFormat::Json);
            assert_eq!(ours_v, parse(theirs.as_bytes()).0);
        }
    }

    #[test]
    fn the_text_access_line_is_the_line_tracings_formatter_writes() {
        for l in &lines() {
            let mut ours = Vec::new();
            text_line(&mut ours, l);
            let ours = String::from_utf8(ours).unwrap();
            let (time, rest) = ours.split_once("  INFO ").unwrap();
            assert_eq!(time.len(), 27, "{ours}");
            let theirs = as_tracing_writes_it(l, LogFormat::Text);
            assert_eq!(rest, theirs.split_once("  INFO ").unwrap().1);
        }
    }

    #[test]
    fn a_quoted_field_is_written_as_rusts_debug_writes_it_whatever_its_bytes() {
        let mut samples: Vec<String> = (0u32..0x250)
            .filter_map(char::from_u32)
            .map(|c| format!("/api/x{c}y"))
            .collect();
        samples.extend(
            [
                "",
                " ",
                "/api/restorePoints/0f1e?format=Entity",
                "a\"b",
                "a\\b",
                "tab\there",
                "é",
            ]
            .map(String::from),
        );
        for s in samples {
            let mut out = Vec::new();
            quoted(&mut out, &s);
            assert_eq!(String::from_utf8(out).unwrap(), format!("{s:?}"), "{s:?}");
        }
    }

    /// The writer's output, whichever way the file system takes it
    /// (tmpfs, and the system's temporary folder), to a file that appends
    /// and to one written at its position: every byte, in order, after
    /// what the file held (not a whole block), small writes (plain) and
    /// large ones (direct where taken) in turn, with another writer's
    /// lines between them (as `eprintln!`'s, or a second process's).
    #[test]
    fn every_byte_reaches_the_log_file_whether_or_not_it_is_written_direct() {
        for dir in ["/dev/shm".into(), std::env::temp_dir()] {
            if !dir.is_dir() {
                continue;
            }
            for appends in [true, false] {
                let path = dir.join(format!("emgate-log-out-{}-{appends}", std::process::id()));
                std::fs::write(&path, b"before\n").unwrap();
                let file = std::fs::OpenOptions::new()
                    .append(appends)
                    .write(true)
                    .open(&path)
                    .unwrap();
                let mut other = match appends {
                    true => std::fs::OpenOptions::new()
                        .append(true)
                        .open(&path)
                        .unwrap(),
                    false => file.try_clone().unwrap(),
                };
                let mut out = Out::to(Some(file));
                if !appends {
                    let file = out.file.as_mut().unwrap();
                    std::io::Seek::seek(file, std::io::SeekFrom::End(0)).unwrap();
                }
                assert!(out.direct.is_some(), "{dir:?}: a regular file");
                let mut expected = b"before\n".to_vec();
                for n in 0..40u32 {
                    // Line sizes about the writer's, not a multiple of a
                    // block; past the stage's room at the end.
                    let chunk = format!("{n:05}\n").repeat(usize::try_from(n).unwrap() * 1597 + 1);
                    out.write(chunk.as_bytes());
                    expected.extend_from_slice(chunk.as_bytes());
                    if n % 7 == 3 {
                        let line = format!("another writer {n}\n");
                        other.write_all(line.as_bytes()).unwrap();
                        expected.extend_from_slice(line.as_bytes());
                    }
                }
                let written = std::fs::read(&path).unwrap();
                let _ = std::fs::remove_file(&path);
                assert!(
                    written == expected,
                    "{dir:?}, appending {appends}: the log file lost or reordered bytes"
                );
                // The descriptor is left as it was found: a plain write
                // of any size still goes.
                let file = out.file.as_mut().unwrap();
                assert!(file.write_all(b"x").is_ok(), "{dir:?}: O_DIRECT left on");
            }
        }
    }

    /// A direct write at a place off a block boundary (another writer
    /// appended meanwhile) is not taken and says so, and the open file is
    /// left as it was: a plain write of any size still goes.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_direct_write_off_a_block_boundary_is_not_taken_and_leaves_the_file_as_it_was() {
        let path = std::env::temp_dir().join(format!("emgate-log-off-{}", std::process::id()));
        std::fs::write(&path, b"another writer\n").unwrap();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        let mut stage = Stage::new().unwrap();
        let part = stage.hold(&[b'x'; BLOCK]);
        use std::os::fd::AsRawFd as _;
        // SAFETY: reads the flags of a descriptor open for the call.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        let result = direct::around_the_cache(&mut file, flags, part);
        assert!(file.write_all(b"x\n").is_ok(), "O_DIRECT left on");
        let written = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        if result != Err(direct::Short::Refused) {
            assert_eq!(result, Err(direct::Short::NotTaken(0)));
            assert_eq!(written, b"another writer\nx\n");
        }
    }

    /// A busy gateway's batches go around the page cache; a quiet one's,
    /// and a batch that outgrew the buffers' room while the writer was
    /// held up (the disk slow on the last direct write), go through it.
    #[test]
    fn busy_batches_are_written_direct_unless_the_writer_fell_behind() {
        for (len, direct) in [
            (0, false),
            (340, false),
            (DIRECT_FROM - 1, false),
            (DIRECT_FROM, true),
            (WRITE_AT, true),
            (WRITE_AT + 340 * 20, true),
            (WRITE_AT * 2, true),
            (WRITE_AT * 2 + 1, false),
            (HELD_AT_MOST, false),
        ] {
            assert_eq!(goes_direct(len), direct, "{len}");
        }
    }

    /// Stderr as a pipe or a terminal is written plainly: only a regular
    /// file has pages to keep out of the page cache.
    #[test]
    fn only_a_regular_file_is_written_direct() {
        let null = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .unwrap();
        assert!(Out::to(Some(null)).direct.is_none());
        assert!(Out::to(None).direct.is_none());
    }
}
