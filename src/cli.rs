//! The command line: the subcommands and their arguments. The serve settings live in
//! [`crate::settings`], the repro arguments in [`crate::repro`]; this module only assembles them,
//! so neither of those imports the other.

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::settings::{DownstreamSettings, Settings};

/// chokepoint: a deliberately fragile backend that reproduces production collapses on demand.
#[derive(Debug, Parser)]
#[command(name = "chokepoint", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the lab (the default when no subcommand is given).
    Serve(Box<Settings>),
    /// Run the downstream dependency simulator.
    Downstream(DownstreamSettings),
    /// Run the database migrations and exit (a job or init container ahead of replicas that
    /// reach PostgreSQL through PgBouncer with SKIP_MIGRATIONS=true).
    Migrate(Box<Settings>),
    /// Exit 0 when the local server answers 200 on a path (a container HEALTHCHECK without curl).
    Healthcheck(HealthcheckArgs),
    /// List the scenario catalog: id, title, doc page, k6 script, test file, routes (`--json`
    /// for scripts: scripts/ci/k6-smoke.sh reads it).
    Scenarios(ScenariosArgs),
    /// Print the knob table (markdown, as in docs/knobs.md), generated from the one declaration.
    Knobs,
    /// Check the parts of the repository's pages that the catalog writes (the README's and
    /// load-tests/README.md's scenario tables, docs/knobs.md's table, the report schema's
    /// scenario enum): exit 1 naming the stale ones, or rewrite them with `--write`.
    Catalog(CatalogArgs),
    /// Reproduce a catalog row under open-model load and print a breaking-point report
    /// (in-process lab by default; the serve settings, e.g. DATABASE_URL, apply to it).
    Repro(Box<ReproCommand>),
}

/// `chokepoint repro`: its own arguments plus the settings of the in-process lab.
#[derive(Debug, Clone, Args)]
pub struct ReproCommand {
    #[command(flatten)]
    pub repro: crate::repro::ReproArgs,
    #[command(flatten)]
    pub lab: Settings,
}

/// Arguments of `chokepoint scenarios`.
#[derive(Debug, Clone, Args)]
pub struct ScenariosArgs {
    /// One JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `chokepoint catalog`.
#[derive(Debug, Clone, Args)]
pub struct CatalogArgs {
    /// Rewrite the stale parts instead of failing on them.
    #[arg(long)]
    pub write: bool,
    /// The repository's root.
    #[arg(long, default_value = ".")]
    pub root: std::path::PathBuf,
}

/// Arguments of `chokepoint healthcheck`.
#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    /// Port of the local server (the app's 8000, the simulator's 8001).
    #[arg(long, env = "PORT", default_value_t = 8000)]
    pub port: u16,
    /// Path to probe.
    #[arg(long, default_value = "/health")]
    pub path: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3)]
    pub timeout: u64,
}

impl Cli {
    /// Parses the command line, treating a missing subcommand as `serve`.
    pub fn parse_with_default_serve<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        let needs_serve = match args.get(1).and_then(|a| a.to_str()) {
            None => true,
            Some("-h" | "--help" | "-V" | "--version" | "help") => false,
            Some(first) => first.starts_with('-'),
        };
        if needs_serve {
            args.insert(1.min(args.len()), "serve".into());
        }
        let matches = Self::command_with_help().try_get_matches_from(args)?;
        Cli::from_arg_matches(&matches)
    }

    /// The command as `--help` shows it: `repro` lists its own flags and the few serve settings
    /// that matter to it; the rest of serve's settings and knobs still apply to the in-process
    /// lab (`chokepoint serve --help` lists them), but are not repeated.
    pub fn command_with_help() -> clap::Command {
        Cli::command().mut_subcommand("repro", |sub| {
            let own = crate::repro::ReproArgs::augment_args(clap::Command::new("repro"));
            let mut shown: Vec<clap::Id> = own.get_arguments().map(|a| a.get_id().clone()).collect();
            shown.extend(REPRO_SERVE_SETTINGS.iter().map(|id| clap::Id::from(*id)));
            sub.mut_args(|a| {
                let keep = shown.contains(a.get_id());
                a.hide(!keep)
            })
            .after_help(
                "The in-process lab also takes every serve setting and knob (environment variables or \
                 flags; see `chokepoint serve --help` and `chokepoint knobs`).",
            )
        })
    }
}

/// The serve settings `repro --help` shows: the profile and the admin token it runs with, and
/// the stores the in-process lab uses.
const REPRO_SERVE_SETTINGS: &[&str] = &["profile", "admin_token", "database_url", "redis_url", "log_format"];

/// A command-line or environment error in full: the first line names the environment variable
/// behind the offending flag ([`one_line_error`]); clap's own lines follow (what is missing, the
/// accepted values, a "similar argument" suggestion, the usage, and the pointer to `--help`).
pub fn full_error(err: &clap::Error) -> String {
    let rendered = err.to_string();
    let mut out = format!("chokepoint: {}\n", one_line_error(err));
    if let Some(why) = no_repro_note(err) {
        out.push_str(&why);
    }
    for line in rendered.lines().skip(1) {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// `repro <id>` for a scenario of the catalog that has no repro: why it has none and what runs
/// it instead, rather than only "invalid value".
fn no_repro_note(err: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    let (Some(ContextValue::String(arg)), Some(ContextValue::String(value))) =
        (err.get(ContextKind::InvalidArg), err.get(ContextKind::InvalidValue))
    else {
        return None;
    };
    if arg != "<SCENARIO>" {
        return None;
    }
    let s = crate::scenarios::find(value)?;
    let why = s.repro.as_ref().err()?;
    Some(format!(
        "`{}` is in the catalog but has no repro: {why}.\nRun it with: k6 run -e SMOKE=1 {} (see {})\n",
        s.id, s.k6.path, s.doc
    ))
}

/// One line for a command-line or environment error, naming the environment variable behind
/// the offending flag, e.g. `invalid value 'abc' for DB_POOL_SIZE (--db-pool-size): ...`.
pub fn one_line_error(err: &clap::Error) -> String {
    let rendered = err.to_string();
    let first = rendered
        .lines()
        .next()
        .unwrap_or("invalid configuration")
        .trim_start_matches("error: ");
    let Some(clap::error::ContextValue::String(arg)) = err.get(clap::error::ContextKind::InvalidArg) else {
        return first.to_string();
    };
    let long = arg.split_whitespace().next().unwrap_or("").trim_start_matches("--");
    let env = Cli::command()
        .get_subcommands()
        .flat_map(|sub| sub.get_arguments().cloned().collect::<Vec<_>>())
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()));
    match env {
        Some(env) => format!("{first} (environment variable {env})"),
        None => first.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn missing_subcommand_means_serve() {
        let cli = Cli::parse_with_default_serve(["chokepoint", "--port", "9000"]).unwrap();
        assert!(matches!(cli.command, Command::Serve(s) if s.port == 9000));
        let cli = Cli::parse_with_default_serve(["chokepoint"]).unwrap();
        assert!(matches!(cli.command, Command::Serve(_)));
        let cli = Cli::parse_with_default_serve(["chokepoint", "downstream"]).unwrap();
        assert!(matches!(cli.command, Command::Downstream(d) if d.port == 8001));
    }

    #[test]
    fn knob_flags_keep_their_names_and_ranges() {
        let cli = Cli::parse_with_default_serve([
            "chokepoint",
            "--db-pool-size",
            "3",
            "--db-pool-timeout",
            "1.5",
            "--enable-circuit-breaker",
            "true",
            "--cpu-mode",
            "offload",
        ])
        .unwrap();
        let Command::Serve(s) = cli.command else {
            panic!("not serve")
        };
        let (k, _) = s.startup_knobs();
        assert_eq!(
            (k.db_pool_size, k.db_pool_timeout_ms, k.breaker_enabled),
            (3, 1500, true)
        );
        assert_eq!(k.cpu_mode, crate::knobs::CpuMode::Offload);
        let err = Cli::parse_with_default_serve(["chokepoint", "--db-pool-size", "0"]).unwrap_err();
        assert!(
            one_line_error(&err).contains("DB_POOL_SIZE"),
            "{}",
            one_line_error(&err)
        );
    }
}
