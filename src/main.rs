//! Command line: `serve`, `check`, `calls`, `call`.

use clap::{Parser, Subcommand};
use hotline::config::{Config, LogFormat};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "hotline", about = "SIP voice hotline")]
struct Cli {
    /// Configuration file (default: config/hotline.toml, else the embedded defaults).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Override a configuration key: KEY=VALUE (TOML value; repeatable).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hotline.
    Serve,
    /// Validate the configuration; exit 0 if usable, 2 if not.
    Check,
    /// List calls, newest first.
    Calls {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// List voice messages, newest first.
    Voicemails {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Place a test call (a small softphone for smoke tests).
    Call {
        /// Whom to call, e.g. sip:hotline@127.0.0.1:5060
        uri: String,
        /// Hang up this many seconds after the answer.
        #[arg(long, default_value_t = 5.0)]
        hangup_after: f64,
        /// Local address to send from (default: chosen by routing).
        #[arg(long)]
        bind: Option<std::net::SocketAddr>,
        /// Digits to send and when, in seconds after the answer: "1@3.0,2@5.5".
        #[arg(long, default_value = "")]
        dtmf: String,
        /// How digits are sent: rfc4733, inband or info.
        #[arg(long, default_value = "rfc4733")]
        dtmf_mode: hotline::uac::DigitMode,
        /// A WAV file to play as the caller's voice after the answer.
        #[arg(long)]
        play: Option<PathBuf>,
        /// Record what the caller hears into this WAV file.
        #[arg(long)]
        record: Option<PathBuf>,
    },
}

fn init_logs(cfg: &Config, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json || cfg.log.format == LogFormat::Json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (cfg, file) = match Config::load(cli.config.as_deref(), &cli.set) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hotline: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Check => match hotline::app::load_call_flow(&cfg) {
            Ok((flow, prompts)) => {
                println!(
                    "{file}: ok; {}: {} nodes; {}: {} prompts",
                    cfg.ivr.flow.display(),
                    flow.nodes.len(),
                    cfg.prompts.dir.display(),
                    prompts.len()
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for e in errors {
                    eprintln!("hotline: {e}");
                }
                ExitCode::from(2)
            }
        },
        Command::Serve => {
            init_logs(&cfg, cli.log_json);
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("hotline: cannot start runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(hotline::server::run(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(hotline::server::StartError::Config(errors)) => {
                    for e in errors {
                        eprintln!("hotline: {e}");
                    }
                    ExitCode::from(2)
                }
                Err(hotline::server::StartError::Other(e)) => {
                    eprintln!("hotline: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Calls { json, limit } => calls(&cfg, json, limit),
        Command::Voicemails { json, limit } => voicemails(&cfg, json, limit),
        Command::Call {
            uri,
            hangup_after,
            bind,
            dtmf,
            dtmf_mode,
            play,
            record,
        } => {
            let dtmf = match hotline::uac::parse_dtmf_schedule(&dtmf) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("hotline: --dtmf: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logs(&cfg, cli.log_json);
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("hotline: cannot start runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let opts = hotline::uac::CallOptions {
                target: uri,
                hangup_after: Duration::from_secs_f64(hangup_after.clamp(0.0, 86_400.0)),
                bind,
                rtp_ports: cfg.rtp.ports,
                dtmf,
                dtmf_mode,
                play,
                record,
            };
            match rt.block_on(hotline::uac::run(opts)) {
                Ok(summary) => {
                    println!("{}", serde_json::to_string(&summary).unwrap_or_default());
                    if summary.answered {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("hotline: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn calls(cfg: &Config, json: bool, limit: usize) -> ExitCode {
    let path = cfg.database_path();
    let conn = match hotline::store::open_existing(&path) {
        Ok(Some(c)) => c,
        Ok(None) => {
            if json {
                println!("[]");
            } else {
                println!("no calls yet ({} does not exist)", path.display());
            }
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("hotline: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let rows = match hotline::store::list_calls(&conn, limit) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hotline: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
    } else {
        println!(
            "{:>6}  {:<32}  {:<32}  {:<16}  from",
            "id", "started", "ended", "reason"
        );
        for r in rows {
            println!(
                "{:>6}  {:<32}  {:<32}  {:<16}  {}",
                r.id,
                r.started_at,
                r.ended_at.unwrap_or_default(),
                r.end_reason.unwrap_or_default(),
                r.from.unwrap_or_else(|| "-".into())
            );
        }
    }
    ExitCode::SUCCESS
}

fn voicemails(cfg: &Config, json: bool, limit: usize) -> ExitCode {
    let path = cfg.database_path();
    let conn = match hotline::store::open_existing(&path) {
        Ok(Some(c)) => c,
        Ok(None) => {
            println!("{}", if json { "[]" } else { "no voice messages yet" });
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("hotline: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    match hotline::store::list_voicemails(&conn, limit) {
        Ok(rows) if json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&rows).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Ok(rows) => {
            for v in rows {
                println!(
                    "{}  ref {}  {:>6} ms{}  {}",
                    v.recording.created_at,
                    v.reference.unwrap_or_else(|| "-".into()),
                    v.recording.duration_ms,
                    if v.recording.partial {
                        " (partial)"
                    } else {
                        ""
                    },
                    v.recording.path
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hotline: {}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}
