//! The `guestgate` command line: parse arguments, then call the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use guestgate::Config;

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
    /// Run the proxy (the default).
    Run,
    /// Run the proxy in front of a built-in echo upstream and print a request to try.
    Demo,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
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
            Command::Run => run(Config::load(cli.config.as_deref())).await,
            Command::Demo => demo(cli.config).await,
        }
    })
}

async fn run(config: Result<Config, guestgate::config::ConfigError>) -> ExitCode {
    let config = match config {
        Ok(config) => config,
        Err(e) => {
            for line in e.problems {
                eprintln!("guestgate: config: {line}");
            }
            return ExitCode::FAILURE;
        }
    };
    guestgate::telemetry::init(&config.settings.log);
    match guestgate::start(config).await {
        Ok(running) => {
            guestgate::server::shutdown_signal().await;
            running.shutdown().await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("guestgate: cannot listen: {e}");
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
    let config = Config::load_with_env(file.as_deref(), Some(guestgate::demo::demo_env(upstream)));
    if let Ok(config) = &config {
        println!(
            "guestgate demo: proxy on http://{} -> echo upstream http://{upstream}\n\nTry:\n\n{}\n\nThe echo shows the body the upstream received: no \"id\", a \"to\", \"from.id\" kept. Ctrl-C stops.\n",
            config.listen,
            guestgate::demo::example_curl(config.listen)
        );
    }
    run(config).await
}
