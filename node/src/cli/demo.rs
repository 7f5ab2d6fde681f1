//! `peergrid demo`: the first command a newcomer runs.
//!
//! Until the grid subsystems (network, worker, scheduler) land, it runs the Mandelbrot
//! example on this machine through the real sandbox, exactly as `peergrid run` does,
//! writes the PNG, and says so plainly.

use std::path::PathBuf;
use std::process::ExitCode;

use super::GlobalOpts;
use super::run::RunCmd;

/// Run the Mandelbrot example and write a picture (local mode until the grid lands).
#[derive(Debug, clap::Args)]
pub struct DemoCmd {
    /// Where to write the picture.
    #[arg(long, short, value_name = "FILE", default_value = "peergrid-demo.png")]
    pub out: PathBuf,
}

impl DemoCmd {
    pub(super) fn execute(self, global: &GlobalOpts) -> anyhow::Result<ExitCode> {
        println!(
            "peergrid demo: running the Mandelbrot example locally, every chunk in the \
             WebAssembly sandbox\n(the multi-peer grid is not built yet; this demo will \
             run it on a small local grid once it is)\n"
        );
        let run = RunCmd {
            job: "mandelbrot".into(),
            params: super::common::ParamsOpts {
                params: None,
                params_file: None,
            },
            limits: super::common::LimitOpts {
                fuel: None,
                memory: None,
                timeout: None,
            },
            out: Some(self.out.clone()),
            threads: None,
            json: false,
        };
        let code = run.execute(global)?;
        if code == ExitCode::SUCCESS {
            println!("\nopen {} to see the picture", self.out.display());
        }
        Ok(code)
    }
}
