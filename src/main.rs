//! parse config -> init telemetry -> App::build -> run until SIGTERM or SIGINT.

use std::process::ExitCode;

use clap::{Parser, error::ErrorKind};
use jobd::{App, Config, shutdown, telemetry};

/// Exit status for a bad setting (EX_USAGE).
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    let config = match Config::try_parse() {
        Ok(config) => config,
        Err(error)
            if matches!(
                error.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) =>
        {
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => return usage_error(&error.to_string()),
    };
    if let Err(message) = config.validate() {
        return usage_error(&message);
    }
    telemetry::init(config.server.log_format);

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("jobd: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let app = App::build(config).await?;
        app.run(shutdown::signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "jobd failed");
            ExitCode::FAILURE
        }
    }
}

/// Prints the first line of a configuration error, which names the setting, and exits 64.
fn usage_error(message: &str) -> ExitCode {
    let line = message.lines().next().unwrap_or("invalid configuration");
    eprintln!("jobd: {}", line.trim_start_matches("error: "));
    ExitCode::from(EXIT_USAGE)
}
