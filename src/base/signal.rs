//! Waiting for the signals that stop a process (SIGTERM from Kubernetes, Ctrl-C at a terminal).

/// Resolves on SIGTERM or Ctrl-C (Ctrl-C only, if SIGTERM cannot be watched).
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
