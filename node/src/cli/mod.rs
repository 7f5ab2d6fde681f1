//! The command line: one file per subcommand, each a clap struct with `execute()`.
//! Shared option groups live in [`common`] and are flattened into the commands that
//! take them. Every flag's doc comment is its `--help`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod bench;
pub mod bench_grid;
pub mod bench_hostile;
pub mod bench_scale;
pub mod bench_trust;
mod bench_variants;
mod bench_wasi;
mod calibrate;
pub mod cancel;
pub mod client;
pub mod common;
pub mod demo;
pub mod examples;
pub mod inspect;
pub mod jobs;
pub mod new;
pub mod node;
pub mod pause;
pub mod peers;
pub mod prefs;
pub mod results;
pub mod run;
pub mod status;
pub mod submit;
mod untrusted;

/// peergrid: a volunteer compute grid. Lend spare CPU, run jobs as sandboxed
/// WebAssembly on many peers, accept results only when independent peers agree.
#[derive(Debug, Parser)]
#[command(name = "peergrid", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalOpts,
    #[command(subcommand)]
    command: Command,
}

/// Options every command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalOpts {
    /// Directory the node keeps its files in (identity, config, store, caches).
    /// Default: the platform's data directory, e.g. ~/.local/share/peergrid.
    #[arg(long, global = true, env = "PEERGRID_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
enum Command {
    // Boxed: its options are by far the largest variant.
    Node(Box<node::NodeCmd>),
    Peers(peers::PeersCmd),
    Status(status::StatusCmd),
    Submit(submit::SubmitCmd),
    Jobs(jobs::JobsCmd),
    Results(results::ResultsCmd),
    Cancel(cancel::CancelCmd),
    Pause(pause::PauseCmd),
    Resume(pause::ResumeCmd),
    Prefs(prefs::PrefsCmd),
    Run(run::RunCmd),
    Inspect(inspect::InspectCmd),
    Examples(examples::ExamplesCmd),
    New(new::NewCmd),
    Demo(demo::DemoCmd),
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Measure this machine's fuel speed and print it (a node runs this as a child
    /// process on its first start; see node/speed.rs).
    #[command(name = crate::node::speed::CALIBRATE_COMMAND, hide = true)]
    CalibrateFuel,
}

impl Cli {
    /// Sets up `tracing` from `RUST_LOG`, or from `-v` (default: warnings only).
    pub fn init_logging(&self) {
        let default = match self.global.verbose {
            // libp2p's request-response warns once per stream it drops over the
            // streams-per-connection limit: a flood of streams would be a flood
            // of log lines (3 000 in a second in bench hostile's cancel-flood),
            // filling the volunteer's disk or journal.
            0 if matches!(self.command, Command::Node(_)) => {
                "info,libp2p_swarm=warn,libp2p_kad=error,libp2p_request_response=error"
            }
            0 => "warn",
            1 => "peergrid_node=debug,info",
            _ => "trace",
        };
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .try_init();
    }

    /// Runs the command.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let global = self.global;
        match self.command {
            Command::Node(cmd) => (*cmd).execute(&global),
            Command::Peers(cmd) => cmd.execute(&global),
            Command::Status(cmd) => cmd.execute(&global),
            Command::Submit(cmd) => cmd.execute(&global),
            Command::Jobs(cmd) => cmd.execute(&global),
            Command::Results(cmd) => cmd.execute(&global),
            Command::Cancel(cmd) => cmd.execute(&global),
            Command::Pause(cmd) => cmd.execute(&global),
            Command::Resume(cmd) => cmd.execute(&global),
            Command::Prefs(cmd) => cmd.execute(&global),
            Command::Run(cmd) => cmd.execute(&global),
            Command::Inspect(cmd) => cmd.execute(&global),
            Command::Examples(cmd) => cmd.execute(),
            Command::New(cmd) => cmd.execute(),
            Command::Demo(cmd) => cmd.execute(&global),
            Command::Bench(cmd) => cmd.execute(&global),
            Command::CalibrateFuel => calibrate::execute(),
        }
    }
}
