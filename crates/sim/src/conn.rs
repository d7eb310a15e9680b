//! One connection's context, as the request handler sees it: what the
//! listener ([`server`](super::server)) makes for each connection and the
//! handler uses for the `Reset` fault.

use std::io;
use std::sync::Mutex;

use tokio::net::TcpStream;

/// Per-connection context the handler needs.
pub(crate) struct ConnCtx {
    /// A second descriptor of the connection's socket (a `dup`), kept only so the
    /// `Reset` fault can set `SO_LINGER` to zero: when hyper then drops the
    /// connection, the kernel answers with a TCP RST instead of a FIN. `None` once
    /// used, or when duplicating failed (the fault then closes with a FIN).
    reset_handle: Mutex<Option<std::net::TcpStream>>,
}

impl ConnCtx {
    /// The context of a connection, with the duplicate descriptor
    /// [`with_reset_handle`] made (if it could).
    pub(crate) fn new(reset_handle: Option<std::net::TcpStream>) -> ConnCtx {
        ConnCtx {
            reset_handle: Mutex::new(reset_handle),
        }
    }

    /// Arms an abortive close; the caller then makes hyper drop the connection.
    pub fn reset(&self) {
        let handle = self
            .reset_handle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(std_stream) = handle {
            let socket = tokio::net::TcpSocket::from_std_stream(std_stream);
            if let Err(e) = socket.set_zero_linger() {
                tracing::debug!(error = %e, "sim: cannot arm connection reset");
            }
            // Dropping `socket` closes only the duplicate descriptor.
        }
    }
}

/// Duplicates the socket's descriptor for [`ConnCtx::reset`].
pub(crate) fn with_reset_handle(
    stream: TcpStream,
) -> io::Result<(TcpStream, Option<std::net::TcpStream>)> {
    let std_stream = stream.into_std()?;
    let dup = std_stream.try_clone().ok();
    Ok((TcpStream::from_std(std_stream)?, dup))
}
