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
            gateway.wait().await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("netfly: cannot serve on {bind}: {e}");
            ExitCode::FAILURE
        }
    }
}
