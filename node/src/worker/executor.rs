//! The seam where a chunk is executed. The node uses [`SandboxExecutor`]; demos and
//! tests can inject another [`Executor`] (e.g. [`LyingExecutor`], a worker that
//! returns wrong results) through `Node::spawn_with`, never through a flag of the
//! release daemon.

use std::sync::Arc;

use crate::sandbox::{ChunkControl, Entry, Execution, JobModule, Limits, Outcome, Sandbox};

/// Runs one chunk. Called on a blocking thread.
pub trait Executor: Send + Sync + std::fmt::Debug + 'static {
    /// Runs `module`'s `run` on `input` under `limits`; `control` may cancel it.
    fn execute(
        &self,
        module: &JobModule,
        input: &[u8],
        limits: &Limits,
        control: Arc<ChunkControl>,
    ) -> Execution;
}

/// The honest executor: the sandbox.
#[derive(Debug, Clone)]
pub struct SandboxExecutor {
    sandbox: Sandbox,
}

impl SandboxExecutor {
    /// Executes in `sandbox`.
    pub fn new(sandbox: Sandbox) -> Self {
        Self { sandbox }
    }
}

impl Executor for SandboxExecutor {
    fn execute(
        &self,
        module: &JobModule,
        input: &[u8],
        limits: &Limits,
        control: Arc<ChunkControl>,
    ) -> Execution {
        self.sandbox
            .call(module, Entry::Run, input, limits, Some(control))
    }
}

/// A dishonest worker for demos and tests: runs the chunk honestly, then replaces
/// the output with a wrong one for a fraction of chunks. Which chunks it lies about
/// and what it answers depend only on the input and its `salt`, so two liars with
/// different salts never agree with each other (independent liars) and two with the
/// same salt always do (colluders).
#[derive(Debug)]
pub struct LyingExecutor {
    inner: SandboxExecutor,
    probability: f64,
    salt: u64,
    /// Chunks answered honestly before lying starts (a peer that earns trust first).
    honest_first: u64,
    runs: std::sync::atomic::AtomicU64,
}

impl LyingExecutor {
    /// Lies on about `probability` of chunks (1.0: always).
    pub fn new(sandbox: Sandbox, probability: f64, salt: u64) -> Self {
        Self {
            inner: SandboxExecutor::new(sandbox),
            probability,
            salt,
            honest_first: 0,
            runs: 0.into(),
        }
    }

    /// Answers the first `n` chunks honestly, to earn trust, before it lies.
    pub fn honest_first(mut self, n: u64) -> Self {
        self.honest_first = n;
        self
    }

    fn lies_about(&self, input: &[u8]) -> bool {
        let mut h = blake3::Hasher::new();
        h.update(&self.salt.to_le_bytes());
        h.update(input);
        let roll = u16::from_le_bytes([h.finalize().as_bytes()[0], h.finalize().as_bytes()[1]]);
        f64::from(roll) / 65536.0 < self.probability
    }
}

impl Executor for LyingExecutor {
    fn execute(
        &self,
        module: &JobModule,
        input: &[u8],
        limits: &Limits,
        control: Arc<ChunkControl>,
    ) -> Execution {
        let mut exec = self.inner.execute(module, input, limits, control);
        let run = self.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Outcome::Ok(output) = &mut exec.outcome
            && run >= self.honest_first
            && self.lies_about(input)
        {
            let mut h = blake3::Hasher::new();
            h.update(b"lie");
            h.update(&self.salt.to_le_bytes());
            h.update(output);
            // Same length, different bytes: a plausible-looking wrong answer.
            let mut wrong = vec![0u8; output.len()];
            h.finalize_xof().fill(&mut wrong);
            if wrong == *output && !wrong.is_empty() {
                wrong[0] ^= 1;
            }
            *output = wrong;
        }
        exec
    }
}
