//! The `raftkv-cron` binary: `jobs ...` manages job definitions and reads their history;
//! `serve` runs a scheduler against raftkv endpoints, or with `--embed` starts a raftkv member in
//! the same process (with `raftkv serve`'s flags) and schedules on it.
//!
//! Exit status: 0 on success (and after a clean stop on SIGTERM/SIGINT), 1 for a refused or
//! failed command (one line on stderr), 2 for bad usage (clap's errors, bad `raftkv serve`
//! settings).

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use chrono::{DateTime, SecondsFormat, Utc};
use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use comfy_table::{presets, Table};
use raftkv_client::{Client, ClientOptions};
use raftkv_cron::job::{Concurrency, Job, Missed};
use raftkv_cron::jobs::Jobs;
use raftkv_cron::keys::{Keys, DEFAULT_PREFIX};
use raftkv_cron::record::Run;
use raftkv_cron::schedule::Schedule;
use raftkv_cron::scheduler::{Scheduler, SchedulerOptions};
use raftkv_server::flags::process::Signals;
use raftkv_server::flags::ServeArgs;
use raftkv_server::Server;
use tracing::{error, info, warn, Instrument};

/// How long the runtime waits for stray blocking tasks after a stop.
const RUNTIME_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long a `jobs` command keeps trying an unreachable cluster.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest OUTPUT cell of `jobs history`, in characters.
const OUTPUT_WIDTH: usize = 60;

/// raftkv-cron: a distributed cron scheduler on raftkv. Fires are committed once per scheduled
/// instant, claimed by one executor on its lease, and fenced by the claim's revision.
#[derive(Parser, Debug)]
#[command(name = "raftkv-cron", version, propagate_version = true)]
struct Cli {
    /// Comma-separated raftkv (or etcd) client endpoints (host:port or http://host:port)
    #[arg(
        long,
        global = true,
        env = "RAFTKV_CRON_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:2379",
        value_name = "ENDPOINTS"
    )]
    endpoints: Vec<String>,

    /// Key prefix the scheduler's records live under
    #[arg(long, global = true, env = "RAFTKV_CRON_PREFIX", default_value = DEFAULT_PREFIX)]
    prefix: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Add, list, remove, enable, disable and trigger jobs; show their history.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Run a scheduler (dispatcher candidate and executor) until SIGTERM or SIGINT.
    ///
    /// Against --endpoints by default. With --embed, also starts a raftkv member in this
    /// process, configured with every `raftkv serve` flag (same names, RAFTKV_* variables and
    /// --config-file), and schedules on it: three such processes form their own Raft cluster.
    ///
    /// SIGTERM or SIGINT stops the scheduler, then the member (exit status 0); a second signal
    /// exits at once.
    Serve(Box<ServeCommand>),
}

#[derive(Subcommand, Debug)]
enum JobsCommand {
    /// Add a job from a JSON definition (FILE, or - for stdin) or from flags.
    Add(AddArgs),
    /// List the jobs with their last run and next fire.
    List {
        /// Output format
        #[arg(short = 'w', long, value_enum, default_value_t = Output::Table)]
        write_out: Output,
    },
    /// Remove a job (its definition, cursor and active marker).
    Rm {
        /// The job
        name: String,
        /// Also delete its fires, claims and history
        #[arg(long)]
        purge: bool,
    },
    /// Enable a job: it fires again on its schedule.
    Enable {
        /// The job
        name: String,
    },
    /// Disable a job: it keeps its definition and history but does not fire.
    Disable {
        /// The job
        name: String,
    },
    /// Run a job once now (whatever its schedule, enabled flag and concurrency policy).
    RunNow {
        /// The job
        name: String,
    },
    /// Show a job's runs, newest first.
    History {
        /// The job
        name: String,
        /// Most runs shown (0: all kept)
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Output format
        #[arg(short = 'w', long, value_enum, default_value_t = Output::Table)]
        write_out: Output,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    /// A table
    Table,
    /// JSON
    Json,
}

/// `jobs add`: a definition file, or the common fields of a shell job as flags.
#[derive(Args, Debug)]
struct AddArgs {
    /// JSON job definition (`-`: standard input); without it, --name, --schedule and --command
    /// describe a shell job
    #[arg(
        value_name = "FILE",
        conflicts_with_all = ["name", "schedule", "command", "timezone", "concurrency", "missed",
            "starting_deadline", "retries", "timeout", "disabled"]
    )]
    file: Option<PathBuf>,
    /// Job name: letters, digits, '.', '_' and '-'
    #[arg(long, required_unless_present = "file")]
    name: Option<String>,
    /// Cron expression: 5 fields, or 6 with seconds first
    #[arg(long, required_unless_present = "file")]
    schedule: Option<String>,
    /// Shell command (run with sh -c)
    #[arg(long, required_unless_present = "file")]
    command: Option<String>,
    /// IANA time zone the schedule is read in [default: UTC]
    #[arg(long)]
    timezone: Option<String>,
    /// When a fire comes while a run is active [default: allow]
    #[arg(long, value_enum)]
    concurrency: Option<ConcurrencyArg>,
    /// What to do with fires missed past the starting deadline [default: skip]
    #[arg(long, value_enum)]
    missed: Option<MissedArg>,
    /// How late a run may start, in seconds [default: 60]
    #[arg(long, value_name = "SECS")]
    starting_deadline: Option<u64>,
    /// Retries of a failed run [default: 0]
    #[arg(long, value_name = "N")]
    retries: Option<u32>,
    /// Kill the command after this many seconds [default: 3600]
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// Add the job disabled
    #[arg(long)]
    disabled: bool,
    /// Overwrite a job of the same name
    #[arg(long)]
    replace: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ConcurrencyArg {
    Allow,
    Forbid,
    Replace,
}

impl From<ConcurrencyArg> for Concurrency {
    fn from(c: ConcurrencyArg) -> Self {
        match c {
            ConcurrencyArg::Allow => Concurrency::Allow,
            ConcurrencyArg::Forbid => Concurrency::Forbid,
            ConcurrencyArg::Replace => Concurrency::Replace,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum MissedArg {
    Skip,
    RunOnce,
    RunAll,
}

impl From<MissedArg> for Missed {
    fn from(m: MissedArg) -> Self {
        match m {
            MissedArg::Skip => Missed::Skip,
            MissedArg::RunOnce => Missed::RunOnce,
            MissedArg::RunAll => Missed::RunAll,
        }
    }
}

/// `serve`'s own flags, and `raftkv serve`'s for `--embed`.
#[derive(Args, Debug)]
struct ServeCommand {
    /// Start a raftkv member in this process with the `raftkv serve` flags below, and schedule
    /// on it (--endpoints is then not used)
    #[arg(long)]
    embed: bool,
    /// This scheduler's name in claims and history [default: --name with --embed, else
    /// HOSTNAME-PID]
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    /// TTL of the scheduler's leases (executor claims, dispatcher election), in seconds
    #[arg(long, default_value_t = 5, value_name = "SECS",
        value_parser = clap::value_parser!(i64).range(1..))]
    lease_ttl: i64,
    /// History records kept per job
    #[arg(long, default_value_t = 100, value_name = "N")]
    history_limit: usize,
    #[command(flatten)]
    server: ServeArgs,
}

/// Why the binary exits non-zero.
enum Failure {
    /// Bad usage: one line, exit status 2.
    Usage(String),
    /// A refused or failed command: one line, exit status 1.
    Command(anyhow::Error),
    /// A runtime failure of `serve`, already logged: exit status 1.
    Runtime,
}

fn main() -> ExitCode {
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => e.exit(),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Jobs(cmd) => run_jobs(&cli.endpoints, &cli.prefix, cmd),
        Command::Serve(serve) => {
            let explicit = matches
                .subcommand_matches("serve")
                .map(embed_only_flags_given)
                .unwrap_or_default();
            run_serve(&cli.endpoints, &cli.prefix, *serve, &explicit)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            report_error(&message);
            ExitCode::from(2)
        }
        Err(Failure::Command(e)) => {
            report_error(&format!("{e:#}"));
            ExitCode::FAILURE
        }
        Err(Failure::Runtime) => ExitCode::FAILURE,
    }
}

/// Prints a one-line error the way clap prints its own.
#[expect(
    clippy::print_stderr,
    reason = "the command's one-line errors; the log subscriber may not exist yet"
)]
fn report_error(message: &str) {
    eprintln!("error: {}", message.replace('\n', " "));
}

/// Prints the command's output.
#[expect(
    clippy::print_stdout,
    reason = "a command-line tool's output (tables, JSON, confirmations) goes to stdout"
)]
fn print_out(text: &str) {
    println!("{text}");
}

/// The `raftkv serve` flags given on the command line (not by the environment) other than
/// `--log-level`: they mean something only with `--embed`.
fn embed_only_flags_given(serve: &clap::ArgMatches) -> Vec<String> {
    let command = <ServeArgs as Args>::augment_args(clap::Command::new("serve"));
    command
        .get_arguments()
        .filter(|a| a.get_id() != "log_level")
        .filter(|a| serve.value_source(a.get_id().as_str()) == Some(ValueSource::CommandLine))
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .collect()
}

/// Installs the log subscriber (see [`raftkv_server::flags::process::init_logging`]).
fn init_logging(filter: &str) -> Result<(), Failure> {
    raftkv_server::flags::process::init_logging(filter).map_err(Failure::Usage)
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Command(anyhow!("cannot start the async runtime: {e}")))
}

// ---------------------------------------------------------------------------------------------
// jobs ...

fn run_jobs(endpoints: &[String], prefix: &str, cmd: JobsCommand) -> Result<(), Failure> {
    // Warnings (an unreadable record skipped) go to stderr; RAFTKV_LOG shows more.
    let filter = std::env::var("RAFTKV_LOG").unwrap_or_else(|_| "warn".to_string());
    init_logging(&filter)?;
    let rt = runtime()?;
    let result = rt.block_on(async {
        // etcdctl's command timeout: an unreachable cluster is reported in seconds.
        let opts = ClientOptions {
            request_timeout: Some(COMMAND_TIMEOUT),
            retry_deadline: COMMAND_TIMEOUT,
            ..ClientOptions::default()
        };
        let client = Client::connect(endpoints.iter().cloned(), opts)
            .await
            .context("--endpoints")?;
        let jobs = Jobs::new(client, Keys::new(prefix));
        jobs_command(&jobs, cmd).await
    });
    rt.shutdown_timeout(RUNTIME_SHUTDOWN_GRACE);
    result.map_err(Failure::Command)
}

async fn jobs_command(jobs: &Jobs, cmd: JobsCommand) -> anyhow::Result<()> {
    match cmd {
        JobsCommand::Add(args) => {
            let replace = args.replace;
            let job = job_from_args(args)?;
            jobs.add(&job, replace).await?;
            let verb = if replace { "stored" } else { "added" };
            print_out(&format!("job {:?} {verb}", job.name));
        }
        JobsCommand::List { write_out } => {
            let now = Utc::now();
            let mut rows = Vec::new();
            for job in jobs.list().await? {
                let last_run = jobs.last_run(&job.name).await?;
                let next_fire = next_fire(&job, now);
                rows.push(ListRow {
                    job,
                    last_run,
                    next_fire,
                });
            }
            print_out(&match write_out {
                Output::Json => serde_json::to_string_pretty(&rows)?,
                Output::Table => list_table(&rows),
            });
        }
        JobsCommand::Rm { name, purge } => {
            jobs.remove(&name, purge).await?;
            let what = if purge { " and its records" } else { "" };
            print_out(&format!("job {name:?}{what} removed"));
        }
        JobsCommand::Enable { name } => {
            jobs.set_enabled(&name, true).await?;
            print_out(&format!("job {name:?} enabled"));
        }
        JobsCommand::Disable { name } => {
            jobs.set_enabled(&name, false).await?;
            print_out(&format!("job {name:?} disabled"));
        }
        JobsCommand::RunNow { name } => {
            let at = jobs.run_now(&name).await?;
            print_out(&format!("job {name:?}: run requested at {}", time(at)));
        }
        JobsCommand::History {
            name,
            limit,
            write_out,
        } => {
            let runs = jobs.history(&name, limit).await?;
            print_out(&match write_out {
                Output::Json => serde_json::to_string_pretty(&runs)?,
                Output::Table => history_table(&runs),
            });
        }
    }
    Ok(())
}

/// The job of `jobs add`: parsed from the file (or stdin), or built from the flags through the
/// same JSON parser, so defaults and validation are the library's.
fn job_from_args(args: AddArgs) -> anyhow::Result<Job> {
    let text = match &args.file {
        Some(path) if path.as_os_str() == "-" => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("reading the job from standard input")?;
            buf
        }
        Some(path) => std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        None => flags_json(&args)?,
    };
    Ok(Job::from_json(&text)?)
}

/// A shell job's JSON from `jobs add` flags (only the given fields: the rest take the
/// definition's defaults).
fn flags_json(args: &AddArgs) -> anyhow::Result<Vec<u8>> {
    let (Some(name), Some(schedule), Some(command)) = (&args.name, &args.schedule, &args.command)
    else {
        bail!("give a definition FILE (or -), or --name, --schedule and --command");
    };
    let mut run = serde_json::json!({ "type": "shell", "command": command });
    if let Some(t) = args.timeout {
        run["timeout_secs"] = t.into();
    }
    let mut job = serde_json::json!({ "name": name, "schedule": schedule, "run": run });
    if let Some(tz) = &args.timezone {
        job["timezone"] = tz.as_str().into();
    }
    if let Some(c) = args.concurrency {
        job["concurrency"] = serde_json::to_value(Concurrency::from(c))?;
    }
    if let Some(m) = args.missed {
        job["missed"] = serde_json::to_value(Missed::from(m))?;
    }
    if let Some(d) = args.starting_deadline {
        job["starting_deadline_secs"] = d.into();
    }
    if let Some(r) = args.retries {
        job["retries"] = serde_json::json!({ "max": r });
    }
    if args.disabled {
        job["enabled"] = false.into();
    }
    Ok(serde_json::to_vec(&job)?)
}

/// One line of `jobs list`.
#[derive(serde::Serialize)]
struct ListRow {
    job: Job,
    last_run: Option<Run>,
    next_fire: Option<DateTime<Utc>>,
}

/// The next fire of an enabled job with a valid schedule.
fn next_fire(job: &Job, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if !job.enabled {
        return None;
    }
    Schedule::new(&job.schedule, &job.timezone)
        .ok()?
        .next_after(now)
}

fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// An enum's serde name (`run_once`, `succeeded`, ...).
fn name_of<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "?".to_string(),
    }
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::ASCII_FULL)
        .set_header(header.to_vec());
    t
}

fn list_table(rows: &[ListRow]) -> String {
    let mut t = table(&[
        "NAME",
        "SCHEDULE",
        "TIME ZONE",
        "ENABLED",
        "CONCURRENCY",
        "LAST RUN",
        "LAST STATUS",
        "NEXT FIRE",
    ]);
    for r in rows {
        let (last, status) = match &r.last_run {
            Some(run) => (time(run.scheduled), name_of(&run.status)),
            None => ("-".to_string(), "-".to_string()),
        };
        let next = match (r.job.enabled, r.next_fire) {
            (false, _) => "- (disabled)".to_string(),
            (true, Some(at)) => time(at),
            (true, None) => "never".to_string(),
        };
        t.add_row(vec![
            r.job.name.clone(),
            r.job.schedule.clone(),
            r.job.timezone.clone(),
            r.job.enabled.to_string(),
            name_of(&r.job.concurrency),
            last,
            status,
            next,
        ]);
    }
    t.to_string()
}

/// The last non-empty line of `output`, cut to [`OUTPUT_WIDTH`] characters.
fn last_line(output: &str) -> String {
    let line = output
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    if line.chars().count() > OUTPUT_WIDTH {
        let cut: String = line.chars().take(OUTPUT_WIDTH - 3).collect();
        format!("{cut}...")
    } else {
        line.to_string()
    }
}

fn duration(run: &Run) -> String {
    match run.started {
        Some(started) => {
            let ms = (run.ended - started).num_milliseconds().max(0);
            format!("{}.{:03}s", ms / 1000, ms % 1000)
        }
        None => "-".to_string(),
    }
}

fn history_table(runs: &[Run]) -> String {
    let mut t = table(&[
        "SCHEDULED",
        "ATTEMPT",
        "STATUS",
        "NODE",
        "TOKEN",
        "STARTED",
        "DURATION",
        "CODE",
        "OUTPUT",
    ]);
    let dash = || "-".to_string();
    for r in runs {
        t.add_row(vec![
            time(r.scheduled),
            r.attempt.to_string(),
            name_of(&r.status),
            r.node.clone().unwrap_or_else(dash),
            if r.token > 0 {
                r.token.to_string()
            } else {
                dash()
            },
            r.started.map_or_else(dash, time),
            duration(r),
            r.code.map_or_else(dash, |c| c.to_string()),
            last_line(&r.output),
        ]);
    }
    t.to_string()
}

// ---------------------------------------------------------------------------------------------
// serve

/// Where `serve` gets its store from.
enum Store {
    /// `--endpoints`.
    Remote(Vec<String>),
    /// A member started in this process.
    Embedded(Box<raftkv_server::Config>),
}

fn run_serve(
    endpoints: &[String],
    prefix: &str,
    cmd: ServeCommand,
    explicit: &[String],
) -> Result<(), Failure> {
    let (store, log_filter, default_node) = if cmd.embed {
        let settings = cmd.server.resolve().map_err(Failure::Usage)?;
        let name = settings.config.name.clone();
        (
            Store::Embedded(Box::new(settings.config)),
            settings.log_filter,
            name,
        )
    } else {
        if let Some(flag) = explicit.first() {
            return Err(Failure::Usage(format!(
                "{flag} is a raftkv member flag: it needs --embed"
            )));
        }
        let filter = cmd
            .server
            .log_level
            .map_or_else(|| "info".to_string(), |f| f.0);
        (Store::Remote(endpoints.to_vec()), filter, host_pid())
    };
    init_logging(&log_filter)?;
    let node = cmd.node.unwrap_or(default_node);
    if node.trim().is_empty() {
        return Err(Failure::Usage("--node must not be empty".into()));
    }
    let mut opts = SchedulerOptions::new(node.clone());
    opts.keys = Keys::new(prefix);
    opts.lease_ttl = cmd.lease_ttl;
    opts.history_limit = cmd.history_limit;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            error!(error = %e, "cannot start the async runtime");
            Failure::Runtime
        })?;
    let span = tracing::info_span!("cron", node = %node);
    let result = rt.block_on(serve(store, opts).instrument(span));
    rt.shutdown_timeout(RUNTIME_SHUTDOWN_GRACE);
    result
}

/// `HOSTNAME-PID`: a scheduler's default node name without `--embed`.
fn host_pid() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "raftkv-cron".to_string());
    format!("{host}-{}", std::process::id())
}

/// The URL this process's client reaches a bound client address at (a wildcard address is
/// reached on loopback).
fn local_url(addr: std::net::SocketAddr) -> String {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{addr}")
}

/// Runs the scheduler (and the embedded member) until a signal or a fatal error.
async fn serve(store: Store, opts: SchedulerOptions) -> Result<(), Failure> {
    // Listen for signals first, so a SIGTERM during startup still stops cleanly.
    let mut signals = Signals::new().map_err(|e| {
        error!(error = %e, "cannot listen for signals");
        Failure::Runtime
    })?;
    let (endpoints, mut server) = match store {
        Store::Remote(endpoints) => (endpoints, None),
        Store::Embedded(config) => {
            info!(
                name = %config.name,
                data_dir = %config.data_dir.display(),
                client_urls = ?config.listen_client_urls,
                peer_urls = ?config.listen_peer_urls,
                "starting the embedded member"
            );
            let started = tokio::select! {
                started = Server::start(*config) => started,
                signal = signals.recv() => {
                    info!(signal, "stopped before the member started");
                    return Ok(());
                }
            };
            let server = match started {
                Ok(s) => s,
                Err(raftkv_server::Error::Config(message)) => return Err(Failure::Usage(message)),
                Err(e) => {
                    error!(error = %e, "cannot start the embedded member");
                    return Err(Failure::Runtime);
                }
            };
            let urls: Vec<String> = server
                .client_addrs()
                .iter()
                .copied()
                .map(local_url)
                .collect();
            info!(
                member_id = %format_args!("{:016x}", server.member_id()),
                client_urls = ?urls,
                "member serving"
            );
            (urls, Some(server))
        }
    };
    let result = schedule(endpoints, opts, &mut signals, server.as_mut()).await;
    if let Some(server) = server {
        // The scheduler has stopped; now the member.
        tokio::select! {
            done = server.shutdown() => match done {
                Ok(()) => info!("member stopped"),
                Err(e) => {
                    error!(error = %e, "member shutdown failed");
                    return Err(Failure::Runtime);
                }
            },
            signal = signals.recv() => {
                warn!(signal, "second signal: exiting without finishing the shutdown");
                return Err(Failure::Runtime);
            }
        }
    }
    result
}

/// Connects, starts the scheduler and runs it until a signal, its own fatal failure or the
/// embedded member's; then stops the scheduler.
async fn schedule(
    endpoints: Vec<String>,
    opts: SchedulerOptions,
    signals: &mut Signals,
    mut server: Option<&mut Server>,
) -> Result<(), Failure> {
    let client = Client::connect(endpoints, ClientOptions::default())
        .await
        .map_err(|e| Failure::Usage(format!("--endpoints: {e}")))?;
    let node = opts.node.clone();
    let started = tokio::select! {
        started = Scheduler::start(client, opts) => started,
        signal = signals.recv() => {
            info!(signal, "stopped before the scheduler started");
            return Ok(());
        }
        stopped = member_stopped(server.as_deref_mut()) => {
            error!(result = ?stopped, "the embedded member stopped");
            return Err(Failure::Runtime);
        }
    };
    let mut scheduler = match started {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot start the scheduler");
            return Err(Failure::Runtime);
        }
    };
    info!(node = %node, "scheduler running");
    let outcome = tokio::select! {
        signal = signals.recv() => {
            info!(signal, "shutting down");
            Ok(())
        }
        stopped = scheduler.stopped() => {
            match stopped {
                Ok(()) => error!("the scheduler stopped"),
                Err(e) => error!(error = %e, "the scheduler stopped on a fatal error"),
            }
            Err(Failure::Runtime)
        }
        stopped = member_stopped(server) => {
            match stopped {
                Ok(()) => error!("the embedded member stopped"),
                Err(e) => error!(error = %e, "the embedded member stopped on a fatal error"),
            }
            Err(Failure::Runtime)
        }
    };
    tokio::select! {
        () = scheduler.shutdown() => info!("scheduler stopped"),
        signal = signals.recv() => {
            warn!(signal, "second signal: exiting without finishing the shutdown");
            return Err(Failure::Runtime);
        }
    }
    outcome
}

/// Resolves when the embedded member stops (never without one).
async fn member_stopped(server: Option<&mut Server>) -> raftkv_server::Result<()> {
    match server {
        Some(s) => s.stopped().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("raftkv-cron").chain(argv.iter().copied()))
    }

    fn add_args(argv: &[&str]) -> AddArgs {
        let mut full = vec!["jobs", "add"];
        full.extend_from_slice(argv);
        match parse(&full).unwrap().command {
            Command::Jobs(JobsCommand::Add(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flags_build_a_job_with_the_definition_defaults() {
        let job = job_from_args(add_args(&[
            "--name",
            "backup",
            "--schedule",
            "0 3 * * *",
            "--command",
            "echo hi",
            "--timezone",
            "Europe/Berlin",
            "--concurrency",
            "forbid",
            "--missed",
            "run-once",
            "--retries",
            "2",
            "--disabled",
        ]))
        .unwrap();
        assert_eq!(job.name, "backup");
        assert_eq!(job.timezone, "Europe/Berlin");
        assert_eq!(job.concurrency, Concurrency::Forbid);
        assert_eq!(job.missed, Missed::RunOnce);
        assert_eq!(job.retries.max, 2);
        assert_eq!(job.starting_deadline_secs, 60);
        assert_eq!(job.run.timeout(), Duration::from_secs(3600));
        assert!(!job.enabled);
    }

    #[test]
    fn bad_jobs_and_usage_are_refused() {
        let e = job_from_args(add_args(&[
            "--name",
            "x",
            "--schedule",
            "61 * * * *",
            "--command",
            "true",
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.contains("schedule"), "{e}");
        // A file and flags together, or neither: clap's usage errors.
        assert!(parse(&["jobs", "add", "job.json", "--name", "x"]).is_err());
        assert!(parse(&["jobs", "add", "--name", "x"]).is_err());
        assert!(parse(&[
            "jobs",
            "add",
            "--name",
            "x",
            "--schedule",
            "* * * * *",
            "--command",
            "t",
            "--concurrency",
            "sometimes"
        ])
        .is_err());
        let e = job_from_args(add_args(&["/nonexistent/job.json"])).unwrap_err();
        assert!(
            format!("{e:#}").starts_with("reading /nonexistent/job.json: "),
            "{e:#}"
        );
    }

    #[test]
    fn member_flags_need_embed() {
        let matches = Cli::command()
            .try_get_matches_from([
                "raftkv-cron",
                "serve",
                "--name",
                "n1",
                "--log-level",
                "debug",
            ])
            .unwrap();
        let given = embed_only_flags_given(matches.subcommand_matches("serve").unwrap());
        assert_eq!(given, ["--name"]);
        let cli = parse(&["serve", "--embed", "--name", "n1", "--lease-ttl", "3"]).unwrap();
        match cli.command {
            Command::Serve(s) => {
                assert!(s.embed);
                assert_eq!(s.lease_ttl, 3);
                assert_eq!(s.server.name.as_deref(), Some("n1"));
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["serve", "--lease-ttl", "0"]).is_err());
    }

    #[test]
    fn endpoints_are_a_comma_list() {
        let cli = parse(&["--endpoints", "127.0.0.1:1,127.0.0.1:2", "jobs", "list"]).unwrap();
        assert_eq!(cli.endpoints, ["127.0.0.1:1", "127.0.0.1:2"]);
        let cli = parse(&["jobs", "list", "-w", "json", "--prefix", "/x/"]).unwrap();
        assert_eq!(cli.prefix, "/x/");
    }

    #[test]
    fn cells() {
        assert_eq!(last_line("a\nb\n\n"), "b");
        assert_eq!(last_line(""), "");
        let long = "x".repeat(100);
        assert_eq!(last_line(&long).chars().count(), OUTPUT_WIDTH);
        assert_eq!(name_of(&Missed::RunOnce), "run_once");
        assert_eq!(
            local_url("0.0.0.0:2379".parse().unwrap()),
            "http://127.0.0.1:2379"
        );
        assert_eq!(
            local_url("10.0.0.1:5".parse().unwrap()),
            "http://10.0.0.1:5"
        );
    }
}
