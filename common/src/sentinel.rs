//! Redis behind Sentinel: every connection of this process follows the master through failovers.
//!
//! The processes hold Redis connections in many places (connection managers cloned into every
//! component, apalis storages, one-shot health checks), and a connection manager reconnects to
//! the address it was made with. So rather than teach each of them Sentinel, a process with
//! `[cluster.sentinel]` relays its Redis connections through a local port (127.0.0.1, a port
//! the OS picks): the relay asks the sentinels which server is the master every second, connects
//! each new connection to it, and closes every relayed connection when the master changes. The
//! clients see a dropped connection — the case they already ride out — and reconnect, to the new
//! master. Nothing else in the code knows Sentinel exists.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::config::SentinelConfig;

/// How often the sentinels are asked which server is the master.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long a sentinel or the master may take to accept a connection or answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a new connection waits for the first answer of the sentinels before it is closed.
const FIRST_MASTER_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SentinelError {
    #[error("cannot start the local Redis relay for sentinel master {master:?}: {source}")]
    Start { master: String, source: std::io::Error },
}

/// `host:port` (a bracketed IPv6 host allowed), or `None`.
pub fn parse_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    (!host.is_empty() && !host.contains(char::is_whitespace)).then(|| (host.to_owned(), port))
}

/// The local port relaying to the current master of `config`, started on first use (one relay
/// per process and sentinel setup, on a thread of its own so it outlives any caller's runtime).
pub fn local_port(config: &SentinelConfig) -> Result<u16, SentinelError> {
    static RELAYS: OnceLock<Mutex<HashMap<SentinelConfig, u16>>> = OnceLock::new();
    let mut relays = RELAYS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(port) = relays.get(config) {
        return Ok(*port);
    }
    let err = |source| SentinelError::Start { master: config.master.clone(), source };
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    let port = listener.local_addr().map_err(err)?.port();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(err)?;
    let cfg = config.clone();
    std::thread::Builder::new()
        .name(format!("sentinel-{}", config.master))
        .spawn(move || {
            runtime.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => serve(listener, cfg).await,
                    Err(e) => tracing::error!(error = %e, "the local Redis relay cannot listen"),
                }
            })
        })
        .map_err(err)?;
    relays.insert(config.clone(), port);
    Ok(port)
}

async fn serve(listener: TcpListener, config: SentinelConfig) {
    let (master_tx, master_rx) = watch::channel::<Option<String>>(None);
    tokio::spawn(follow_master(config.clone(), master_tx));
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                tokio::spawn(relay(client, master_rx.clone()));
            }
            Err(e) => {
                // Out of file descriptors and the like: the clients retry.
                tracing::warn!(master = %config.master, error = %e, "local Redis relay: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Asks the sentinels every [`POLL_INTERVAL`] and publishes the master's address when it changes.
async fn follow_master(config: SentinelConfig, master: watch::Sender<Option<String>>) {
    let mut last_error: Option<String> = None;
    loop {
        match ask_sentinels(&config).await {
            Ok(addr) => {
                last_error = None;
                let previous = master.borrow().clone();
                if previous.as_deref() != Some(addr.as_str()) {
                    match &previous {
                        None => {
                            tracing::info!(master = %config.master, address = %addr, "redis master found through sentinel")
                        }
                        Some(old) => tracing::warn!(
                            master = %config.master, address = %addr, previous = %old,
                            "redis master changed (sentinel failover): reconnecting every connection"
                        ),
                    }
                    master.send_replace(Some(addr));
                }
            }
            Err(e) => {
                // Logged once per kind of failure, not every second of an outage.
                if last_error.as_deref() != Some(e.as_str()) {
                    tracing::warn!(master = %config.master, error = %e, "no sentinel answered; keeping the last known master");
                    last_error = Some(e);
                }
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The master's `host:port` from the first sentinel that knows it.
async fn ask_sentinels(config: &SentinelConfig) -> Result<String, String> {
    let mut errors = Vec::new();
    for address in &config.addresses {
        match ask_sentinel(config, address).await {
            Ok(addr) => return Ok(addr),
            Err(e) => errors.push(format!("{address}: {e}")),
        }
    }
    Err(errors.join("; "))
}

async fn ask_sentinel(config: &SentinelConfig, address: &str) -> Result<String, String> {
    let (host, port) = parse_host_port(address).ok_or("not host:port")?;
    let mut redis = redis::RedisConnectionInfo::default();
    if let Some(pw) = &config.password {
        redis = redis.set_password(pw);
    }
    let info = redis::IntoConnectionInfo::into_connection_info(redis::ConnectionAddr::Tcp(host, port))
        .map_err(|e| e.to_string())?
        .set_redis_settings(redis);
    let client = redis::Client::open(info).map_err(|e| e.to_string())?;
    let query = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&config.master)
            .query_async::<Option<(String, String)>>(&mut conn)
            .await
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, query).await {
        Err(_) => Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(None)) => Err(format!("does not monitor a master named {:?}", config.master)),
        Ok(Ok(Some((host, port)))) => match port.parse::<u16>() {
            Ok(port) if host.contains(':') => Ok(SocketAddr::new(host.parse().map_err(|_| host)?, port).to_string()),
            Ok(port) => Ok(format!("{host}:{port}")),
            Err(_) => Err(format!("answered an invalid port {port:?}")),
        },
    }
}

/// Relays one client connection to the current master until either side closes it or the
/// master changes.
async fn relay(mut client: TcpStream, mut master: watch::Receiver<Option<String>>) {
    let addr = match tokio::time::timeout(FIRST_MASTER_WAIT, master.wait_for(Option::is_some)).await {
        Ok(Ok(addr)) => addr.clone().unwrap_or_default(),
        // No master known yet: closing makes the client retry, as with Redis down.
        _ => return,
    };
    let mut server = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr)).await {
        Ok(Ok(s)) => s,
        _ => return,
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = master.wait_for(|m| m.as_deref() != Some(addr.as_str())) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_parsing() {
        assert_eq!(parse_host_port("10.0.0.2:26379"), Some(("10.0.0.2".into(), 26379)));
        assert_eq!(parse_host_port("sentinel-1:26379"), Some(("sentinel-1".into(), 26379)));
        assert_eq!(parse_host_port("[::1]:26379"), Some(("::1".into(), 26379)));
        for bad in ["sentinel", ":26379", "host:0", "host:x", "host:70000", "a b:1"] {
            assert_eq!(parse_host_port(bad), None, "{bad}");
        }
    }
}
