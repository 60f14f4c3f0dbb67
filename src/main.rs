//! The `netfly` binary: configuration, logger, bind, serve until a signal.

use std::process::ExitCode;

use netfly::{Config, Gateway};

#[actix_web::main]
async fn main() -> ExitCode {
    let config = Config::from_env_and_args();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let bind = config.bind;
    match Gateway::start(config).await {
        Ok(gateway) => {
            eprintln!("listening on http://{}", gateway.addr);
            if let Some(metrics) = gateway.metrics_addr {
                eprintln!("metrics on http://{metrics}/metrics");
            }
            wait_for_signal().await;
            gateway.shutdown().await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("netfly: cannot serve on {bind}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => log::info!("SIGINT: draining"),
                _ = term.recv() => log::info!("SIGTERM: draining"),
            }
        }
        _ => {
            log::warn!("cannot install signal handlers; Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
