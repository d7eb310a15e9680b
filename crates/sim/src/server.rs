//! The listener: accepts TCP connections, does the TLS handshake when configured,
//! and serves HTTP/1.1 with keep-alive, one task per connection.
//!
//! Shutdown: the accept loop ends when the [`Sim`](super::Sim) handle signals it or
//! is dropped; it then aborts every connection task, which closes their sockets,
//! including connections whose request is held by the `Hang` fault.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::handler;
use super::state::State;

/// Longest a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Per-connection context the handler needs.
pub(crate) struct ConnCtx {
    /// A second descriptor of the connection's socket (a `dup`), kept only so the
    /// `Reset` fault can set `SO_LINGER` to zero: when hyper then drops the
    /// connection, the kernel answers with a TCP RST instead of a FIN. `None` once
    /// used, or when duplicating failed (the fault then closes with a FIN).
    reset_handle: Mutex<Option<std::net::TcpStream>>,
}

impl ConnCtx {
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
fn with_reset_handle(stream: TcpStream) -> io::Result<(TcpStream, Option<std::net::TcpStream>)> {
    let std_stream = stream.into_std()?;
    let dup = std_stream.try_clone().ok();
    Ok((TcpStream::from_std(std_stream)?, dup))
}

/// Accepts connections until `shutdown` changes or its sender is dropped.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    tls: Option<TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tracing::trace!(%peer, "sim: connection accepted");
                    conns.spawn(serve(stream, state.clone(), tls.clone()));
                }
                Err(e) => {
                    // Typically out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "sim: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            // Reap finished connections so the set does not grow without bound.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    conns.shutdown().await;
}

/// Serves one connection until the client closes it, it fails, or it is aborted.
async fn serve(stream: TcpStream, state: Arc<State>, tls: Option<TlsAcceptor>) {
    let _ = stream.set_nodelay(true);
    let (stream, reset_handle) = match with_reset_handle(stream) {
        Ok(v) => v,
        Err(e) => {
            tracing::debug!(error = %e, "sim: cannot set up connection");
            return;
        }
    };
    let ctx = Arc::new(ConnCtx {
        reset_handle: Mutex::new(reset_handle),
    });
    let service = service_fn(move |req| handler::handle(state.clone(), ctx.clone(), req));
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).keep_alive(true);
    let result = match tls {
        Some(acceptor) => {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls_stream)) => {
                    builder
                        .serve_connection(TokioIo::new(tls_stream), service)
                        .await
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "sim: TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("sim: TLS handshake timed out");
                    return;
                }
            }
        }
        None => {
            builder
                .serve_connection(TokioIo::new(stream), service)
                .await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "sim: connection ended with an error");
    }
}
