//! The shutdown signal: one [`CancellationToken`] cloned into every task.
//!
//! First SIGINT/SIGTERM cancels the token (drain: jobs hand their batches back, ffmpeg children
//! get SIGTERM). A second signal, or a drain that takes longer than [`DRAIN_TIMEOUT`] (Redis
//! gone, say), exits at once.

use std::time::Duration;

/// Longest graceful drain before the process exits anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

pub use tokio_util::sync::CancellationToken;

/// Creates the process-wide token and a task that cancels it on the first signal.
pub fn install() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested; draining (send the signal again to exit now)");
        t.cancel();
        tokio::select! {
            _ = wait_for_signal() => tracing::warn!("second signal; exiting now"),
            _ = tokio::time::sleep(DRAIN_TIMEOUT) => tracing::error!(timeout_s = DRAIN_TIMEOUT.as_secs(), "drain took too long; exiting now"),
        }
        exit_now(130);
    });
    token
}

/// Ends the process at once with `code`, running no exit handlers. `std::process::exit` runs the
/// C++ static destructors of OpenCV / ONNX Runtime while channel threads still use them, which
/// crashed a motion worker (SIGSEGV) on a second signal.
#[allow(unsafe_code)]
fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` takes no pointers and does not return; no Rust state is observed after it.
    unsafe { libc::_exit(code) }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
