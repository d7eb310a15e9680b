//! The listener: accepts TCP connections, does the TLS handshake when configured,
//! and serves HTTP/1.1 with keep-alive, one task per connection.
//!
//! Shutdown: the accept loop ends when the [`Sim`](super::Sim) handle signals it or
//! is dropped; it then aborts every connection task, which closes their sockets,
//! including connections whose request is held by the `Hang` fault.

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::conn::{with_reset_handle, ConnCtx};
use super::handler;
use super::state::State;

/// Longest a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
    let ctx = Arc::new(ConnCtx::new(reset_handle));
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
