//! The floor of emgate's stack: a bare hyper server (the same hyper,
//! hyper-util's auto HTTP/1.1 + HTTP/2 builder, tokio with one worker thread)
//! answering bytes it holds in memory, with nothing of a gateway around
//! them: no rules, keys, metrics, logs, limits or request ids. A cache hit
//! of emgate cannot be cheaper than this; `benches/load.sh` runs both side
//! by side and prints emgate's share of the floor.
//!
//!   cargo bench --bench floor --no-run   # builds it (load.sh does)
//!   floor --listen 127.0.0.1:PORT --root DIR [--headers FILE]
//!
//! Every file under DIR is answered at its path (`DIR/api/x` at `/api/x`),
//! anything else is 404. FILE holds `Name: value` lines added to every
//! answer (load.sh copies emgate's hit headers there, so both send the same
//! bytes). Run by `cargo bench` itself (no `--listen`), it says so and exits.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

struct Files {
    bodies: HashMap<String, Bytes>,
    headers: HeaderMap,
}

fn read_tree(root: &Path, dir: &Path, out: &mut HashMap<String, Bytes>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            read_tree(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            let key = format!("/{}", rel.to_string_lossy());
            out.insert(key, Bytes::from(std::fs::read(&path)?));
        }
    }
    Ok(())
}

fn read_headers(file: &Path) -> Result<HeaderMap, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut headers = HeaderMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("not a header line: {line}"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|e| e.to_string())?;
        let value = HeaderValue::from_str(value.trim()).map_err(|e| e.to_string())?;
        headers.append(name, value);
    }
    Ok(headers)
}

async fn answer(
    files: Arc<Files>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match files.bodies.get(req.uri().path()) {
        Some(body) => {
            let mut response = Response::new(Full::new(body.clone()));
            response.headers_mut().clone_from(&files.headers);
            response
        }
        None => {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::NOT_FOUND;
            response
        }
    })
}

fn main() -> Result<(), String> {
    let mut listen: Option<SocketAddr> = None;
    let mut root: Option<PathBuf> = None;
    let mut headers_file: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().and_then(|a| a.parse().ok()),
            "--root" => root = args.next().map(PathBuf::from),
            "--headers" => headers_file = args.next().map(PathBuf::from),
            // What `cargo bench` passes; nothing to measure alone.
            _ => {}
        }
    }
    let (Some(listen), Some(root)) = (listen, root) else {
        println!(
            "floor: a server for benches/load.sh (--listen ADDR --root DIR); nothing to run alone"
        );
        return Ok(());
    };
    let mut bodies = HashMap::new();
    read_tree(&root, &root, &mut bodies).map_err(|e| format!("{}: {e}", root.display()))?;
    let headers = match headers_file {
        Some(file) => read_headers(&file)?,
        None => HeaderMap::new(),
    };
    let files = Arc::new(Files { bodies, headers });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("{listen}: {e}"))?;
        println!("floor listening on {listen}, {} files", files.bodies.len());
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let files = files.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| answer(files.clone(), req));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
