//! parse config -> init telemetry -> App::build -> run until SIGTERM or SIGINT -> flush.

use std::{io::Read, process::ExitCode, time::Duration};

use clap::{Parser, error::ErrorKind};
use jobd::{
    App, Config,
    auth::{NewToken, QueuePattern, Roles, TokenHash},
    config::{Command, InvalidSetting, TokenCommand},
    shutdown, telemetry,
};

/// mimalloc: glibc's malloc spent a fifth of jobd's CPU under load (see BENCHMARKS.md). The
/// deployments set MIMALLOC_ARENA_EAGER_COMMIT=0, so that memory is committed as it is used.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for a bad setting (EX_USAGE).
const EXIT_USAGE: u8 = 64;

/// The longest the last export of traces and metrics may take at exit.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

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
    if let Some(Command::Token(command)) = &config.command {
        return token(command);
    }
    if let Err(message) = config.validate() {
        return usage_error(&message);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("jobd: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let flush_timeout = FLUSH_TIMEOUT.min(config.shutdown.shutdown_timeout);
    let result = runtime.block_on(async {
        // The OTLP exporters' gRPC clients need the runtime, so telemetry starts inside it.
        let telemetry = telemetry::init(config.server.log_format)?;
        let served = async {
            let app = App::build(config).await?;
            app.run(shutdown::signal()).await
        }
        .await;
        // Flushing blocks: keep it off the async workers, and bounded.
        let flushed = tokio::task::spawn_blocking(move || telemetry.shutdown(flush_timeout));
        if tokio::time::timeout(flush_timeout + Duration::from_secs(1), flushed)
            .await
            .is_err()
        {
            tracing::warn!("telemetry did not flush in time");
        }
        served
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.is::<InvalidSetting>() => usage_error(&error.to_string()),
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "jobd failed");
            eprintln!("jobd: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `jobd token new` and `jobd token hash`.
fn token(command: &TokenCommand) -> ExitCode {
    match command {
        TokenCommand::New {
            name,
            roles,
            queues,
        } => {
            let mut all = Roles::NONE;
            for role in roles {
                match Roles::named(role) {
                    Some(known) => all = all.or(known),
                    None => {
                        let known = Roles::known();
                        return usage_error(&format!("unknown role {role:?} (roles: {known})"));
                    }
                }
            }
            let patterns = match queues.iter().map(|q| QueuePattern::parse(q)).collect() {
                Ok(patterns) => patterns,
                Err(message) => return usage_error(&message),
            };
            let new = NewToken::generate(name.clone(), all, patterns);
            if let Err(message) = jobd::auth::parse_principals(&new.entry()) {
                return usage_error(&message);
            }
            println!("{}", new.token);
            println!(
                "# ^ the token for {name:?}: give it to its client; it is shown only now, as jobd \
                 keeps only its SHA-256.\n# The principal's entry, for the auth file:\n{}",
                new.entry()
            );
        }
        TokenCommand::Hash => {
            let mut token = String::new();
            if let Err(error) = std::io::stdin().read_to_string(&mut token) {
                eprintln!("jobd: cannot read the token: {error}");
                return ExitCode::FAILURE;
            }
            let token = token.trim();
            if token.is_empty() {
                return usage_error("no token on standard input");
            }
            println!("token_sha256 = [\"{}\"]", TokenHash::of(token.as_bytes()));
        }
    }
    ExitCode::SUCCESS
}

/// Prints the first line of a configuration error, which names the setting, and exits 64.
fn usage_error(message: &str) -> ExitCode {
    let line = message.lines().next().unwrap_or("invalid configuration");
    eprintln!("jobd: {}", line.trim_start_matches("error: "));
    ExitCode::from(EXIT_USAGE)
}
