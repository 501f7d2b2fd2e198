//! The accept loop: HTTP/1.1 connections served by hyper with a header-read timeout (a client
//! that sends part of its headers and stalls, or keeps an idle connection open, is disconnected
//! instead of holding it), at most `max_connections` open at once,
//! a graceful stop on Ctrl-C or SIGTERM (no new connections; requests in flight get
//! `shutdown_timeout` to finish, then are cut, which cancels them), and an end with an error
//! when the engine thread has failed, so that a supervisor restarts the server instead of it
//! answering 503 forever.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tower::ServiceExt;

use crate::{router, State};

/// Connection limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time a client has to send a request's headers once it has started one.
    pub header_read_timeout: Duration,
    /// Time requests in flight get to finish after a stop signal.
    pub shutdown_timeout: Duration,
    /// Open connections at most; more wait in the kernel's accept queue until one closes.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(30),
            max_connections: 1024,
        }
    }
}

/// Serve on `addr` until Ctrl-C or SIGTERM (or the engine fails: an error).
pub async fn serve(state: State, addr: SocketAddr, limits: Limits) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("glm5 serve: listening on http://{}", listener.local_addr()?);
    serve_on(listener, state, limits, stop_signal()).await
}

/// Ctrl-C, or SIGTERM where there is one.
async fn stop_signal() {
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Serve connections from `listener` until `stop` completes, then give open ones
/// `limits.shutdown_timeout`. Ends with an error if the engine thread fails.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    state: State,
    limits: Limits,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let engine = state.engine.clone();
    let app = router(state);
    let graceful = GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    let mut watch = tokio::time::interval(Duration::from_millis(200));
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let failed = loop {
        let (io, _, slot) = tokio::select! {
            accepted = async {
                let slot = slots.clone().acquire_owned().await.expect("never closed");
                listener.accept().await.map(|(io, a)| (io, a, slot))
            } => match accepted {
                Ok(c) => c,
                // Out of file descriptors and the like: wait a little instead of spinning.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break false,
            _ = watch.tick() => {
                if engine.alive() {
                    continue;
                }
                break true;
            }
        };
        let svc = TowerToHyperService::new(
            app.clone()
                .map_request(|r: Request<Incoming>| r.map(Body::new)),
        );
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        let conn = graceful.watch(http.serve_connection(TokioIo::new(io), svc));
        tokio::spawn(async move {
            let _ = conn.await;
            drop(slot);
        });
    };
    drop(listener);
    let drained = tokio::time::timeout(limits.shutdown_timeout, graceful.shutdown())
        .await
        .is_ok();
    if failed {
        return Err(std::io::Error::other(
            "the engine failed (see above); stopped serving",
        ));
    }
    if !drained {
        eprintln!(
            "glm5 serve: requests still running after {:?} were cut off",
            limits.shutdown_timeout
        );
    }
    Ok(())
}

/// `serve` on a small tokio runtime of its own (one I/O thread: the model computes on the
/// engine thread and the compute pool, which must not share cores with busy tokio workers).
pub fn serve_blocking(state: State, addr: SocketAddr, limits: Limits) -> std::io::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("glm5-http")
        .enable_all()
        .build()?
        .block_on(serve(state, addr, limits))
}
