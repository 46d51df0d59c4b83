//! The API's accept loop: axum's router served by hyper with the limits `axum::serve` lacks, so
//! that a client cannot hold the API with connections that never finish their headers
//! (slowloris) or with more connections than the host can serve.
//!
//! - a request's headers must arrive within [`Limits::header_read_timeout`] (hyper answers 408
//!   and closes);
//! - at most [`Limits::max_connections`] open connections, and [`Limits::max_per_client`] from
//!   one address: past either, a new connection is closed at once (logged once per client per
//!   minute, so a flood does not flood the logs either);
//! - at shutdown, no new connection; open ones finish their request within
//!   [`Limits::shutdown_grace`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::Service;

/// The accept loop's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub max_per_client: usize,
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    /// A site's API: a few dashboards (each with a live view, previews and API calls, a browser
    /// opens at most 6 connections per host) and scripts, behind one reverse proxy at most
    /// (then every client is the proxy: hence 128 per client).
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 512,
            max_per_client: 128,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Open connections, in total and per client address.
#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_client: HashMap<IpAddr, usize>,
    /// When each refused client was last logged.
    logged: HashMap<IpAddr, Instant>,
}

/// Whether a new connection from a client with `from_client` open ones is admitted when
/// `total` are open.
pub fn admit(limits: &Limits, total: usize, from_client: usize) -> bool {
    total < limits.max_connections && from_client < limits.max_per_client
}

/// A connection's place in [`Open`], given back when the connection ends.
struct Slot {
    open: Arc<Mutex<Open>>,
    client: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = lock(&self.open);
        open.total -= 1;
        if let Some(n) = open.by_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.by_client.remove(&self.client);
            }
        }
    }
}

fn lock(open: &Mutex<Open>) -> std::sync::MutexGuard<'_, Open> {
    open.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves `app` on `listener` until `shutdown`, within `limits`. Handlers see the client's
/// address as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let open: Arc<Mutex<Open>> = Arc::default();
    // One permit per open connection: all of them back means every connection ended.
    let running = Arc::new(Semaphore::new(Semaphore::MAX_PERMITS));
    loop {
        let (stream, addr) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause, never end the API.
                    tracing::warn!(error = %e, "API: accepting a connection failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let slot = {
            let mut o = lock(&open);
            let from_client = o.by_client.get(&addr.ip()).copied().unwrap_or(0);
            if admit(&limits, o.total, from_client) {
                o.total += 1;
                *o.by_client.entry(addr.ip()).or_default() += 1;
                Slot { open: open.clone(), client: addr.ip() }
            } else {
                let now = Instant::now();
                let log = o.logged.get(&addr.ip()).is_none_or(|t| now.duration_since(*t) >= Duration::from_secs(60));
                if log {
                    o.logged.retain(|_, t| now.duration_since(*t) < Duration::from_secs(60));
                    o.logged.insert(addr.ip(), now);
                    tracing::warn!(
                        client = %addr.ip(), open = o.total, from_client,
                        "API: connection refused, too many open (max {} in all, {} per client)",
                        limits.max_connections, limits.max_per_client
                    );
                }
                continue; // dropping the stream closes it
            }
        };
        let Ok(permit) = running.clone().acquire_owned().await else { break };
        let (app, stop) = (app.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let _permit = permit;
            let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(addr));
                let mut app = app.clone();
                async move { app.call(req.map(axum::body::Body::new)).await }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), service).with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(client = %addr, error = %e, "API connection ended with an error");
                    }
                }
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(limits.shutdown_grace, conn).await;
                }
            }
        });
    }
    // Every connection task has its permit back once it ended (or its grace ran out).
    let all = u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(limits.shutdown_grace + Duration::from_secs(1), running.acquire_many(all)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    #[test]
    fn connections_are_admitted_under_both_caps_only() {
        let l = Limits { max_connections: 4, max_per_client: 2, ..Limits::default() };
        assert!(admit(&l, 0, 0));
        assert!(admit(&l, 3, 1));
        assert!(!admit(&l, 3, 2), "a client at its cap");
        assert!(!admit(&l, 4, 0), "the API at its cap");
    }

    async fn start(limits: Limits) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<std::io::Result<()>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route(
            "/who",
            axum::routing::get(|ConnectInfo(a): ConnectInfo<SocketAddr>| async move { a.ip().to_string() }),
        );
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(listener, app, limits, stop.clone()));
        (addr, stop, task)
    }

    /// What the server sends on `s` until it closes it (or `within` passes: None).
    async fn until_closed(s: &mut TcpStream, within: Duration) -> Option<String> {
        let mut got = Vec::new();
        let read = tokio::time::timeout(within, s.read_to_end(&mut got)).await;
        read.ok().map(|_| String::from_utf8_lossy(&got).into_owned())
    }

    async fn get_who(addr: SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /who HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await.unwrap();
        until_closed(&mut s, Duration::from_secs(5)).await.expect("an answer")
    }

    #[tokio::test]
    async fn headers_that_never_finish_are_cut_off_and_others_served() {
        let limits = Limits { header_read_timeout: Duration::from_millis(300), ..Limits::default() };
        let (addr, stop, task) = start(limits).await;
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /who HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").await.unwrap();
        let answer = until_closed(&mut slow, Duration::from_secs(5)).await;
        assert!(answer.is_some(), "a connection that never finished its headers is still open after 5 s");
        let answer = get_who(addr).await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("127.0.0.1"), "{answer}");
        stop.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_client_past_its_cap_is_closed_at_once_and_served_again_when_it_closes_some() {
        let limits = Limits { max_per_client: 2, ..Limits::default() };
        let (addr, stop, task) = start(limits).await;
        let held: Vec<TcpStream> =
            vec![TcpStream::connect(addr).await.unwrap(), TcpStream::connect(addr).await.unwrap()];
        // Accepted in order: the third waits for nothing but its turn in the accept loop.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut third = TcpStream::connect(addr).await.unwrap();
        third.write_all(b"GET /who HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.ok();
        let answer = until_closed(&mut third, Duration::from_secs(5)).await;
        assert_eq!(answer.as_deref(), Some(""), "the third connection of one client is closed unanswered");
        drop(held);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(get_who(addr).await.starts_with("HTTP/1.1 200"), "served again once its connections closed");
        stop.cancel();
        task.await.unwrap().unwrap();
    }
}
