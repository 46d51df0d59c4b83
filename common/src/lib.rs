//! Wire types and shared plumbing of the CCTV cluster: config, job and event structs, Redis key
//! names, the job queue (the only place that touches apalis), telemetry, shutdown and the one
//! ffmpeg wrapper. Nothing domain-heavy lives here.

pub mod catlog;
pub mod cli;
pub mod clock;
pub mod config;
pub mod events;
pub mod export;
pub mod ffmpeg;
pub mod heartbeat;
pub mod jobs;
pub mod keys;
pub mod lease;
pub mod naming;
pub mod plan;
pub mod playlist;
pub mod probe;
pub mod queue;
pub mod recording;
pub mod redact;
pub mod secret_input;
pub mod seen;
pub mod sentinel;
pub mod shutdown;
pub mod status;
pub mod streams;
pub mod system;
pub mod telemetry;
pub mod timefmt;
pub mod zones;

pub use config::Config;
pub use keys::Keys;

/// A cluster-unique worker name: kind, host, pid and a random suffix (apalis requires unique
/// names, and a restarted process must not collide with its own unexpired registration).
pub fn worker_name(kind: &str) -> String {
    let host = host_name();
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
    format!("{kind}-{host}-{}-{suffix}", std::process::id())
}

/// This machine's host name ("unknown" if it cannot be read).
pub fn host_name() -> String {
    hostname::get().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "unknown".into())
}
