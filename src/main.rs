//! Thin main: parse settings, initialise telemetry, build the runtime and the app, run until a
//! signal arrives.

use std::net::SocketAddr;
use std::process::ExitCode;

use chokepoint::cli::{self, Cli, Command};
use chokepoint::settings::{DownstreamSettings, Settings};
use chokepoint::{downstream, telemetry, App};

fn main() -> ExitCode {
    let cli = match Cli::parse_with_default_serve(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help / --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // The first line names the environment variable behind a flag; clap's own lines
            // follow (what was missing, the accepted values, a suggestion, the usage).
            eprint!("{}", cli::full_error(&e));
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Serve(settings) => serve(*settings),
        Command::Downstream(settings) => run_downstream(settings),
        Command::Migrate(settings) => migrate(*settings),
        Command::Healthcheck(args) => healthcheck(&args),
        Command::Repro(cmd) => repro(*cmd),
        Command::Scenarios(args) => {
            let listing = chokepoint::scenarios::listing();
            if args.json {
                match serde_json::to_string_pretty(&listing) {
                    Ok(text) => println!("{text}"),
                    Err(e) => return fail("cannot list the scenarios", &e),
                }
            } else {
                println!("{:<15} {:<28} {:<26} title", "id", "k6 script", "test");
                for s in listing {
                    println!("{:<15} {:<28} {:<26} {}", s.id, s.k6, s.test, s.title);
                }
            }
            ExitCode::SUCCESS
        }
        Command::Knobs => {
            print!("{}", chokepoint::knobs::markdown_table());
            ExitCode::SUCCESS
        }
        Command::Catalog(args) => match chokepoint::catalog::check(&args.root, args.write) {
            Ok(stale) if stale.is_empty() => {
                println!("every generated part is current");
                ExitCode::SUCCESS
            }
            Ok(stale) if args.write => {
                println!("rewrote: {}", stale.join(", "));
                ExitCode::SUCCESS
            }
            Ok(stale) => {
                eprintln!(
                    "stale: {}; run `chokepoint catalog --write` (or `cargo run --release -- catalog --write`)",
                    stale.join(", ")
                );
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("chokepoint catalog: {e} (run it from the repository's root, or pass --root)");
                ExitCode::FAILURE
            }
        },
    }
}

fn repro(mut cmd: cli::ReproCommand) -> ExitCode {
    cmd.repro.admin_token = cmd.lab.admin_token.as_ref().map(|t| t.expose().to_string());
    // The in-process lab logs errors only: its failures are the report's subject, not noise.
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "error");
    }
    // On stderr: stdout holds the report alone, so `repro ... > report.txt` is the report.
    telemetry::init_tracing_to(&cmd.lab.log_format, telemetry::LogStream::Stderr);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail("cannot start the async runtime", &e),
    };
    let profile = cmd.lab.profile;
    let lab = cmd.repro.base_url.is_none().then_some(cmd.lab);
    match runtime.block_on(chokepoint::repro::run(cmd.repro, profile, lab)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => fail_anyhow(e),
    }
}

fn migrate(mut settings: Settings) -> ExitCode {
    telemetry::init_tracing(&settings.log_format);
    settings.skip_migrations = false;
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail("cannot start the async runtime", &e),
    };
    runtime.block_on(async move {
        let knobs = settings.startup_knobs().0;
        let registry = prometheus::Registry::new();
        let lifecycle = chokepoint::lifecycle::Lifecycle::default();
        match chokepoint::infra::database::Database::connect(&settings, &knobs, &registry, &lifecycle).await {
            Ok(db) => {
                db.close().await;
                tracing::info!(database = ?db.backend(), "migrations applied");
                ExitCode::SUCCESS
            }
            Err(e) => fail_anyhow(e),
        }
    })
}

fn healthcheck(args: &cli::HealthcheckArgs) -> ExitCode {
    let url = format!("http://127.0.0.1:{}{}", args.port, args.path);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail("cannot start the async runtime", &e),
    };
    let timeout = std::time::Duration::from_secs(args.timeout);
    let result = runtime.block_on(async {
        reqwest::Client::builder()
            .timeout(timeout)
            .build()?
            .get(&url)
            .send()
            .await
    });
    match result {
        Ok(resp) if resp.status().is_success() => ExitCode::SUCCESS,
        Ok(resp) => {
            eprintln!("chokepoint: {url} answered {}", resp.status());
            ExitCode::FAILURE
        }
        Err(e) => fail(&format!("{url} did not answer"), &e),
    }
}

/// The address to type into a browser: a wildcard bind is reached on loopback.
fn browsable(addr: SocketAddr) -> String {
    match addr.ip() {
        ip if ip.is_unspecified() => format!("http://127.0.0.1:{}", addr.port()),
        std::net::IpAddr::V6(ip) => format!("http://[{ip}]:{}", addr.port()),
        ip => format!("http://{ip}:{}", addr.port()),
    }
}

fn serve(settings: Settings) -> ExitCode {
    telemetry::init_tracing(&settings.log_format);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().thread_name("chokepoint-worker");
    if let Some(n) = settings.worker_count {
        builder.worker_threads(usize::from(n));
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => return fail("cannot start the async runtime", &e),
    };
    runtime.block_on(async move {
        let app = match App::build(settings).await {
            Ok(app) => app,
            Err(e) => return fail_anyhow(e),
        };
        let base = browsable(app.local_addr());
        tracing::info!(addr = %app.local_addr(), database = ?app.state().db.backend(),
            downstream = app.state().downstream.base_url(), lab = %format!("{base}/lab"),
            docs = %format!("{base}/docs"),
            grpc = app.state().grpc_addr.map_or_else(|| "off".to_string(), |a| a.to_string()),
            "chokepoint listening");

        match app.run_until_stopped(shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail("server error", &e),
        }
    })
}

fn run_downstream(settings: DownstreamSettings) -> ExitCode {
    telemetry::init_tracing(&settings.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail("cannot start the async runtime", &e),
    };
    runtime.block_on(async move {
        let addr = SocketAddr::new(settings.host, settings.port);
        let (listener, app) = match downstream::bind(addr).await {
            Ok(bound) => bound,
            Err(e) => return fail(&format!("cannot bind {addr} (HOST/PORT)"), &e),
        };
        tracing::info!(%addr, "downstream simulator listening");
        match axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail("server error", &e),
        }
    })
}

fn fail(context: &str, err: &(dyn std::error::Error + 'static)) -> ExitCode {
    let text = format!("{context}: {}", chokepoint::error::error_chain(err));
    match chokepoint::error::hint(&text) {
        Some(hint) => eprintln!("chokepoint: {text}\n  hint: {hint}"),
        None => eprintln!("chokepoint: {text}"),
    }
    ExitCode::FAILURE
}

fn fail_anyhow(err: anyhow::Error) -> ExitCode {
    eprintln!("chokepoint: {}", chokepoint::error::describe(&err));
    ExitCode::FAILURE
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (Kubernetes).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
