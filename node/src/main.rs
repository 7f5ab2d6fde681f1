//! The `peergrid` binary: parse the command line, run the command, report errors in
//! one line (what happened and what to do), never a backtrace.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = peergrid_node::cli::Cli::parse();
    cli.init_logging();
    match cli.execute() {
        Ok(code) => code,
        Err(error) => {
            let chain: Vec<String> = error.chain().map(ToString::to_string).collect();
            eprintln!("error: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}
