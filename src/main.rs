//! The `guestgate` command line: parse arguments, then call the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use guestgate::Config;
use guestgate::config::ConfigError;
use guestgate::gateway::ConfigSource;

/// jemalloc rather than glibc's malloc: with 1,000 idle keep-alive
/// connections the proxy holds about 3 MiB less, at no cost in throughput
/// (bench/NOTES.md, issue 13).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options (read at start-up under tikv-jemallocator's symbol
/// prefix). hyper gives a connection a fresh 8 KiB read buffer for nearly
/// every message it reads, on both sides of the proxy; with the default
/// thread cache of 20 buffers that size, jemalloc emptied and refilled it
/// from new slabs every few requests (3,000 instructions a request). 200
/// keep the cycle in the cache (bench/NOTES.md).
#[cfg(not(target_env = "msvc"))]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8; 28] = b"tcache_nslots_small_min:200\0";

/// Sanitizing reverse proxy for guest chat messaging APIs.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML), layered over the built-in defaults.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default). SIGHUP reloads the configuration.
    Run,
    /// Run the proxy in front of a built-in echo upstream and print a request to try.
    Demo,
    /// Validate the configuration and print the effective settings (secrets masked).
    Check,
    /// Exit 0 when the admin listener's /healthz answers 200 (for container HEALTHCHECK).
    Healthcheck,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("guestgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match cli.command.unwrap_or(Command::Run) {
            Command::Run => {
                run(ConfigSource {
                    file: cli.config,
                    env: None,
                })
                .await
            }
            Command::Demo => demo(cli.config).await,
            Command::Check => check(cli.config),
            Command::Healthcheck => healthcheck(cli.config).await,
        }
    })
}

/// One worker per CPU, or `TOKIO_WORKER_THREADS`. Each worker is a thread
/// with a single-threaded runtime and its own listener: no cross-thread
/// wake-ups or locks on the request path (bench/NOTES.md).
fn workers() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// How long the spans still queued at shutdown may take to reach the collector.
const TRACE_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn report(e: ConfigError) -> ExitCode {
    for line in e.problems {
        eprintln!("guestgate: config: {line}");
    }
    ExitCode::FAILURE
}

async fn run(source: ConfigSource) -> ExitCode {
    let config = match source.load() {
        Ok(config) => config,
        Err(e) => return report(e),
    };
    let traces =
        match guestgate::telemetry::init_with_export(&config.settings.log, config.otlp.as_ref()) {
            Ok(traces) => traces,
            Err(e) => {
                eprintln!("guestgate: config: {e}");
                return ExitCode::FAILURE;
            }
        };
    match guestgate::start_workers(config, source, workers()).await {
        Ok(running) => {
            if let Err(e) = running.reload_on_sighup() {
                tracing::warn!(error = %e, "SIGHUP reload unavailable");
            }
            guestgate::server::shutdown_signal().await;
            running.shutdown().await;
            if let Some(traces) = traces {
                traces.shutdown(TRACE_FLUSH_TIMEOUT).await;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("guestgate: cannot listen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(file: Option<PathBuf>) -> ExitCode {
    match Config::load(file.as_deref()) {
        Ok(config) => {
            print!("{}", config.effective_toml());
            eprintln!("guestgate: configuration OK");
            ExitCode::SUCCESS
        }
        Err(e) => report(e),
    }
}

async fn healthcheck(file: Option<PathBuf>) -> ExitCode {
    let config = match Config::load(file.as_deref()) {
        Ok(config) => config,
        Err(e) => return report(e),
    };
    let Some(admin) = config.admin_listen else {
        eprintln!("guestgate: healthcheck: admin.listen is disabled");
        return ExitCode::FAILURE;
    };
    match guestgate::admin::healthcheck(admin).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("guestgate: healthcheck: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn demo(file: Option<PathBuf>) -> ExitCode {
    let upstream = match guestgate::demo::start_echo_upstream().await {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("guestgate: cannot start the demo upstream: {e}");
            return ExitCode::FAILURE;
        }
    };
    let source = ConfigSource {
        file,
        env: Some(guestgate::demo::demo_env(upstream)),
    };
    if let Ok(config) = source.load() {
        println!(
            "guestgate demo: proxy on http://{} -> echo upstream http://{upstream}\n\nTry:\n\n{}\n\nThe echo shows the body the upstream received: no \"id\", a \"to\", \"from.id\" kept. Ctrl-C stops.\n",
            config.listen,
            guestgate::demo::example_curl(config.listen)
        );
    }
    run(source).await
}
