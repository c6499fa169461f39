//! jobd-bench: drives jobd through its gRPC API only, as a user's services would, with the
//! Rust client library (`jobd_client`: its workers, `submit`, `watch`, `submit_and_wait`), and
//! prints what it measured as a table and one JSON line per scenario. See BENCHMARKS.md.
//!
//! `cargo run --release --bin jobd-bench -- <scenario> [options]` starts its own redis-server
//! and jobd (this same binary, `serve`, in a child process) unless `--jobd` and `--redis-url`
//! name running ones.
//!
//! Code map: `env.rs` (the redis-server and jobd under test, and what is read off them),
//! `perimeter.rs` (auth file, certificates, and the client connections that go with them),
//! `scenarios/` (one file per scenario; `clients.rs`, the workers and submitters they run),
//! `report.rs` (medians, the table and the JSON line).

mod env;
mod perimeter;
mod report;
mod scenarios;

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use perimeter::Perimeter;

/// The allocator jobd's own binary uses, so that `serve` measures the same jobd.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Benchmarks jobd through its gRPC API")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// N jobs submitted with P calls in flight, W workers completing them, a watcher per job.
    Lifecycle(LifecycleArgs),
    /// Jobs submitted at a fixed rate; latency from the intended send time.
    OpenLoop(OpenLoopArgs),
    /// Many concurrent WatchJob streams, then their jobs complete.
    FanOut(FanOutArgs),
    /// Redis commands and Redis CPU time per job lifecycle.
    RedisCost(LifecycleArgs),
    /// Every scenario, one after the other, each on a fresh jobd and Redis.
    All {
        /// Sizes that finish in seconds (for CI), instead of the documented ones.
        #[arg(long)]
        small: bool,
        /// Runs of each scenario but fan-out (see `lifecycle --runs`); by default 3, or 1 with
        /// --small.
        #[arg(long)]
        runs: Option<usize>,
        /// The perimeter of every jobd started (see `lifecycle --perimeter`).
        #[arg(long, value_enum, default_value_t = Perimeter::Plain)]
        perimeter: Perimeter,
    },
    /// Runs jobd itself (used by the other commands; not for direct use).
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        redis_url: String,
        #[arg(long)]
        listen: String,
        #[arg(long)]
        pool_size: u16,
        /// As jobd's flags of the same names.
        #[arg(long)]
        auth_file: Option<PathBuf>,
        #[arg(long, requires = "tls_key_file")]
        tls_cert_file: Option<PathBuf>,
        #[arg(long, requires = "tls_cert_file")]
        tls_key_file: Option<PathBuf>,
    },
    /// Writes the files `--perimeter` gives the jobd the benchmark starts into a directory:
    /// auth.toml and token, ca.crt, jobd.crt and jobd.key (for bench/instructions.sh, which
    /// starts jobd itself, under callgrind).
    #[command(hide = true)]
    PerimeterFiles {
        #[arg(long, value_enum)]
        perimeter: Perimeter,
        #[arg(long)]
        dir: PathBuf,
    },
}

/// Where to find jobd and Redis; by default the benchmark starts both.
#[derive(Args, Clone, Debug, Default)]
pub struct Target {
    /// A running jobd to drive, e.g. http://127.0.0.1:50051, or https:// with --tls-ca-file
    /// (needs --redis-url too).
    #[arg(long)]
    jobd: Option<String>,
    /// The Redis that jobd uses, for the Redis figures.
    #[arg(long)]
    redis_url: Option<String>,
    /// Pool size of the jobd the benchmark starts.
    #[arg(long, default_value_t = 4)]
    pool_size: u16,
    /// What the clients of the jobd the benchmark starts go through: plain (no auth file,
    /// plaintext), auth (an auth file, a bearer token on every call), tls (gRPC over TLS, a
    /// certificate for 127.0.0.1 from a CA made for the run), or auth-tls (both). Reports
    /// name it; a plain run's report is as it was before there was a choice.
    #[arg(long, value_enum, default_value_t = Perimeter::Plain, conflicts_with = "jobd")]
    perimeter: Perimeter,
    /// The bearer token to send to a running jobd (--jobd) on every call. It shows in the
    /// process list: --token-file does not.
    #[arg(long, requires = "jobd", conflicts_with = "token_file")]
    token: Option<String>,
    /// A file holding the bearer token to send to a running jobd (--jobd).
    #[arg(long, requires = "jobd")]
    token_file: Option<PathBuf>,
    /// PEM file of the CA that signed the certificate of a running jobd with an https:// URL.
    #[arg(long, requires = "jobd")]
    tls_ca_file: Option<PathBuf>,
    /// The name to check the running jobd's certificate against, if not the URL's host.
    #[arg(long, requires = "tls_ca_file")]
    tls_domain: Option<String>,
    /// PEM file of a client certificate to present to a running jobd that asks for one (mTLS).
    #[arg(long, requires_all = ["tls_ca_file", "tls_client_key_file"])]
    tls_client_cert_file: Option<PathBuf>,
    /// PEM file of the key of --tls-client-cert-file.
    #[arg(long, requires = "tls_client_cert_file")]
    tls_client_key_file: Option<PathBuf>,
}

impl Target {
    /// The perimeter its clients go through: the one asked for, or what the options for a
    /// running jobd say.
    pub fn perimeter(&self) -> Perimeter {
        let Some(url) = &self.jobd else {
            return self.perimeter;
        };
        let auth = self.token.is_some() || self.token_file.is_some();
        match (auth, url.starts_with("https:")) {
            (false, false) => Perimeter::Plain,
            (true, false) => Perimeter::Auth,
            (false, true) => Perimeter::Tls,
            (true, true) => Perimeter::AuthTls,
        }
    }
}

#[derive(Args, Clone, Debug)]
pub struct LifecycleArgs {
    #[command(flatten)]
    target: Target,
    /// Jobs in all.
    #[arg(long, default_value_t = 20_000)]
    jobs: usize,
    /// Submissions in flight at once.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Workers claiming and completing jobs.
    #[arg(long, default_value_t = 16)]
    workers: usize,
    /// Jobs a worker runs at once (a `jobd_client::Worker`'s concurrency), and so claims at
    /// most per call: it claims for its free slots with ClaimJobs, and completes the jobs
    /// finished meanwhile with one CompleteJobs, which claims for the slots free by then.
    #[arg(long, default_value_t = 1)]
    batch: u32,
    /// Jobs a submitter sends per call: 1 uses SubmitJob (`submit`); more uses SubmitJobs
    /// (`submit_many`); then it watches every job to its terminal event (`watch`).
    #[arg(long, default_value_t = 1)]
    submit_batch: usize,
    /// Submit and watch with one SubmitAndWatchJobs call (of --submit-batch jobs) instead of
    /// a submit and a WatchJob per job: `submit_and_wait` for one job, the stub for more.
    #[arg(long)]
    submit_and_watch: bool,
    /// Runs, each on a fresh jobd and Redis; the figures are the runs' medians, with their
    /// lowest and highest in `spread`.
    #[arg(long, default_value_t = 1)]
    runs: usize,
}

#[derive(Args, Clone, Debug)]
pub struct OpenLoopArgs {
    #[command(flatten)]
    target: Target,
    /// Jobs per second to submit.
    #[arg(long, default_value_t = 2_000)]
    rate: u64,
    /// How long to submit for.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Workers claiming and completing jobs.
    #[arg(long, default_value_t = 16)]
    workers: usize,
    /// Jobs a worker runs at once, and so claims at most per call (see `lifecycle --batch`).
    #[arg(long, default_value_t = 1)]
    batch: u32,
    /// Submit and watch each job with one SubmitAndWatchJobs call instead of SubmitJob, then
    /// WatchJob.
    #[arg(long)]
    submit_and_watch: bool,
    /// Runs, each on a fresh jobd and Redis; the figures are the runs' medians, with their
    /// lowest and highest in `spread`.
    #[arg(long, default_value_t = 1)]
    runs: usize,
}

#[derive(Args, Clone, Debug)]
pub struct FanOutArgs {
    #[command(flatten)]
    target: Target,
    /// Concurrent WatchJob streams, one per job.
    #[arg(long, default_value_t = 10_000)]
    watchers: usize,
    /// Streams per client connection.
    #[arg(long, default_value_t = 100)]
    streams_per_connection: usize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve {
                redis_url,
                listen,
                pool_size,
                auth_file,
                tls_cert_file,
                tls_key_file,
            } => {
                let files = env::ServeFiles {
                    auth_file,
                    tls_cert_file,
                    tls_key_file,
                };
                env::serve(&redis_url, &listen, pool_size, files).await
            }
            Command::PerimeterFiles { perimeter, dir } => {
                perimeter::ServerFiles::write(perimeter, &dir).map(drop)
            }
            Command::Lifecycle(args) => scenarios::lifecycle(args).await,
            Command::OpenLoop(args) => scenarios::open_loop(args).await,
            Command::FanOut(args) => scenarios::fan_out(args).await,
            Command::RedisCost(args) => scenarios::redis_cost(args).await,
            Command::All {
                small,
                runs,
                perimeter,
            } => {
                let runs = runs.unwrap_or(if small { 1 } else { 3 });
                scenarios::all(small, runs, perimeter).await
            }
        }
    })
}
