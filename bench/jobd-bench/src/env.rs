//! The systems under test: a redis-server and a jobd of the benchmark's own (or given ones),
//! and what can be read off them (Redis INFO, CLIENT LIST, jobd's resident memory).

use std::{
    collections::BTreeMap,
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use jobd::{App, Config};
use jobd_client::Client;

use crate::{
    Target,
    perimeter::{ClientSide, ServerFiles},
};

/// A Redis and a jobd, started here or given; what was started stops on drop.
pub struct Systems {
    client: ClientSide,
    redis_url: String,
    jobd: Option<Child>,
    redis: Option<Child>,
    /// The auth file and certificates of the jobd started here, removed after it stops.
    _files: Option<ServerFiles>,
}

impl Systems {
    pub async fn start(target: &Target) -> anyhow::Result<Self> {
        if let Some(jobd_url) = &target.jobd {
            let redis_url = target
                .redis_url
                .clone()
                .context("--jobd needs --redis-url, for the Redis figures")?;
            return Ok(Self {
                client: ClientSide::for_running(target, jobd_url)?,
                redis_url,
                jobd: None,
                redis: None,
                _files: None,
            });
        }
        let (redis, redis_port) = match &target.redis_url {
            Some(url) => (None, url::Url::parse(url)?.port()),
            None => {
                let port = free_port()?;
                let child = Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
                    .stdout(Stdio::null())
                    .spawn()
                    .context("redis-server must be installed (.ci/install installs it)")?;
                wait_for_port(port).await?;
                (Some(child), Some(port))
            }
        };
        let redis_url = target
            .redis_url
            .clone()
            .unwrap_or_else(|| format!("redis://127.0.0.1:{}", redis_port.unwrap_or(6379)));
        let files = ServerFiles::make(target.perimeter)?;
        let port = free_port()?;
        let jobd = Command::new(std::env::current_exe()?)
            .args(["serve", "--redis-url", &redis_url])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--pool-size", &target.pool_size.to_string()])
            .args(files.iter().flat_map(ServerFiles::serve_args))
            .env("RUST_LOG", "warn")
            // As jobd's Dockerfile, manifests and deploy/local/run set it.
            .env(
                "MIMALLOC_ARENA_EAGER_COMMIT",
                std::env::var("MIMALLOC_ARENA_EAGER_COMMIT").unwrap_or_else(|_| "0".into()),
            )
            .spawn()?;
        wait_for_port(port).await?;
        Ok(Self {
            client: ServerFiles::client_side(files.as_ref(), port),
            redis_url,
            jobd: Some(jobd),
            redis,
            _files: files,
        })
    }

    /// A new client connection to jobd.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        self.client.connect().await
    }

    /// Runs a Redis command through redis-cli.
    pub fn redis_cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new("redis-cli")
            .args(["-u", &self.redis_url])
            .args(args)
            .output()
            .context("redis-cli must be installed")?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// What Redis has done so far: commands run and the time they took, by command, and its
    /// CPU time.
    pub fn redis_counters(&self) -> anyhow::Result<RedisCounters> {
        // Lines such as `cmdstat_zadd:calls=12,usec=34,usec_per_call=2.83,...`; commands run
        // by scripts are counted too, their time also inside the script's own.
        let stats = self.redis_cli(&["INFO", "commandstats"])?;
        let by_command = stats
            .lines()
            .filter_map(|line| {
                let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                let value = |key: &str| {
                    rest.split(',')
                        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
                        .and_then(|value| value.parse::<u64>().ok())
                };
                Some((name.to_owned(), (value("calls")?, value("usec")?)))
            })
            .collect();
        let cpu = self.redis_cli(&["INFO", "cpu"])?;
        let seconds = |name: &str| {
            cpu.lines()
                .find_map(|line| line.strip_prefix(&format!("{name}:")))
                .and_then(|value| value.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Ok(RedisCounters {
            by_command,
            cpu_us: (seconds("used_cpu_sys") + seconds("used_cpu_user")) * 1e6,
        })
    }

    /// jobd's Redis connections, by their CLIENT LIST names.
    pub fn jobd_connections(&self) -> anyhow::Result<usize> {
        Ok(self
            .redis_cli(&["CLIENT", "LIST"])?
            .lines()
            .filter(|line| line.contains(" name=jobd:"))
            .count())
    }

    /// CPU time so far, in microseconds, of jobd, Redis and this benchmark process; `None` for
    /// a process the benchmark did not start.
    pub fn cpu_us(&self) -> CpuTimes {
        let of = |child: Option<&Child>| child.and_then(|child| process_cpu_us(child.id()));
        CpuTimes {
            jobd: of(self.jobd.as_ref()),
            redis: of(self.redis.as_ref()),
            bench: process_cpu_us(std::process::id()),
        }
    }

    /// jobd's resident memory in MiB, when the benchmark started it.
    pub fn jobd_rss_mib(&self) -> Option<f64> {
        let pid = self.jobd.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib: f64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib / 1024.0)
    }
}

impl Drop for Systems {
    fn drop(&mut self) {
        for child in [self.jobd.as_mut(), self.redis.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The perimeter files `jobd-bench serve` gives jobd, as jobd's flags of the same names.
pub struct ServeFiles {
    pub auth_file: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
}

/// `jobd-bench serve`: jobd itself, with quiet logs and room for many streams.
pub async fn serve(
    redis_url: &str,
    listen: &str,
    pool_size: u16,
    files: ServeFiles,
) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let mut args = vec![
        "jobd".to_owned(),
        format!("--redis-url={redis_url}"),
        format!("--listen={listen}"),
        format!("--redis-pool-size={pool_size}"),
        "--instance-id=bench".to_owned(),
    ];
    for (flag, path) in [
        ("auth-file", &files.auth_file),
        ("tls-cert-file", &files.tls_cert_file),
        ("tls-key-file", &files.tls_key_file),
    ] {
        if let Some(path) = path {
            args.push(format!("--{flag}={}", path.display()));
        }
    }
    let config = <Config as clap::Parser>::try_parse_from(args)?;
    let app = App::build(config).await?;
    app.run(jobd::shutdown::signal()).await
}

/// CPU time of the processes under test, in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct CpuTimes {
    pub jobd: Option<f64>,
    pub redis: Option<f64>,
    pub bench: Option<f64>,
}

impl CpuTimes {
    /// Microseconds per job of each process between `before` and `self`.
    pub fn per_job_since(&self, before: &CpuTimes, jobs: usize) -> CpuTimes {
        let per_job =
            |after: Option<f64>, before: Option<f64>| Some((after? - before?) / jobs.max(1) as f64);
        CpuTimes {
            jobd: per_job(self.jobd, before.jobd),
            redis: per_job(self.redis, before.redis),
            bench: per_job(self.bench, before.bench),
        }
    }
}

/// User plus system CPU time of a process (all its threads) from /proc/<pid>/stat, in
/// microseconds. The kernel counts it in ticks of USER_HZ, which is 100 on Linux.
fn process_cpu_us(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it are space-separated.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the name: state is field 3 of the whole line, utime 14 and stime 15.
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks * 10_000.0)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn wait_for_port(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("nothing listens on port {port}")
}

/// Redis's counters at one moment (see `Systems::redis_counters`).
pub struct RedisCounters {
    /// Per command: calls and microseconds spent in it.
    pub by_command: BTreeMap<String, (u64, u64)>,
    /// User and system CPU time of the whole server, microseconds.
    pub cpu_us: f64,
}

impl RedisCounters {
    pub fn calls(&self) -> u64 {
        self.by_command.values().map(|(calls, _)| calls).sum()
    }
}
