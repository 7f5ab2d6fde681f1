//! The chunk pool: the threads chunks run on, owned by the worker and used by nothing
//! else.
//!
//! A chunk is a synchronous call into the sandbox (through the [`Executor`] seam) that
//! may compute for minutes, or wait at the sandbox gate while the volunteer's machine
//! is busy. It runs here, never on tokio's threads: each pool thread lowers its own
//! scheduling priority to the lowest (nice 19) once, when it starts, so the
//! volunteer's programs come first. Tokio's shared blocking pool, where merges,
//! splits, blob and database work run, keeps its normal priority.
//!
//! The worker's run task ([`super::Worker`]) takes a slot (a permit of the worker's
//! `slots_max` semaphore) and then hands the call to [`ChunkPool::run`], which
//! resolves with its result. Threads start on demand, up to `slots_max`, and stay;
//! the queue holds at most `slots_max` calls, which the slots already guarantee.
//!
//! [`Executor`]: super::Executor

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// Stack of a pool thread: room for the deepest wasm stack the sandbox allows
/// ([`crate::sandbox::MAX_WASM_STACK`]) and the host frames under it. Only the
/// pages a chunk touches become resident.
const STACK_BYTES: usize = 4 * crate::sandbox::MAX_WASM_STACK;

/// The nice value of pool threads: the lowest priority.
pub const CHUNK_NICE: i32 = 19;

/// Why a call did not run to its end.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    /// More calls are waiting than the pool has threads (a caller ran without a slot).
    #[error("the chunk pool is full ({0} calls waiting)")]
    Full(usize),
    /// No pool thread could be started.
    #[error("could not start a chunk thread: {0}")]
    Spawn(String),
    /// The call panicked (the thread survives).
    #[error("the chunk call panicked")]
    Panicked,
}

type Call = Box<dyn FnOnce() + Send>;

/// The pool (see the module docs). Dropping it lets its threads end once the calls
/// queued are done.
pub struct ChunkPool {
    shared: Arc<Shared>,
}

struct Shared {
    max: usize,
    state: Mutex<State>,
    work: Condvar,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Call>,
    threads: usize,
    idle: usize,
    closed: bool,
}

impl std::fmt::Debug for ChunkPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.shared.lock();
        f.debug_struct("ChunkPool")
            .field("max", &self.shared.max)
            .field("threads", &state.threads)
            .field("queued", &state.queue.len())
            .finish()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ChunkPool {
    /// A pool of at most `max` threads (at least one).
    pub fn new(max: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                max: max.max(1),
                state: Mutex::new(State::default()),
                work: Condvar::new(),
            }),
        }
    }

    /// Threads started so far.
    pub fn threads(&self) -> usize {
        self.shared.lock().threads
    }

    /// Runs `f` on a pool thread and resolves with what it returns.
    pub async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, PoolError> {
        let (tx, rx) = oneshot::channel();
        self.submit(Box::new(move || {
            let result = std::panic::catch_unwind(AssertUnwindSafe(f));
            let _ = tx.send(result.map_err(|_| PoolError::Panicked));
        }))?;
        rx.await.unwrap_or(Err(PoolError::Panicked))
    }

    fn submit(&self, call: Call) -> Result<(), PoolError> {
        let mut state = self.shared.lock();
        if state.queue.len() >= self.shared.max {
            return Err(PoolError::Full(state.queue.len()));
        }
        state.queue.push_back(call);
        // Start a thread when the calls waiting outnumber the idle threads.
        if state.queue.len() > state.idle && state.threads < self.shared.max {
            let shared = self.shared.clone();
            let n = state.threads;
            let started = std::thread::Builder::new()
                .name(format!("peergrid-chunk-{n}"))
                .stack_size(STACK_BYTES)
                .spawn(move || serve(&shared));
            match started {
                Ok(_) => state.threads += 1,
                Err(e) if state.threads == 0 => {
                    state.queue.pop_back();
                    return Err(PoolError::Spawn(e.to_string()));
                }
                // The threads already there will take it.
                Err(e) => tracing::warn!(error = %e, "could not start another chunk thread"),
            }
        }
        drop(state);
        self.shared.work.notify_one();
        Ok(())
    }
}

impl Drop for ChunkPool {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.work.notify_all();
    }
}

/// A pool thread: lowers its priority once, then runs calls until the pool closes.
fn serve(shared: &Shared) {
    lower_thread_priority();
    loop {
        let call = {
            let mut state = shared.lock();
            loop {
                if let Some(call) = state.queue.pop_front() {
                    break call;
                }
                if state.closed {
                    state.threads -= 1;
                    return;
                }
                state.idle += 1;
                state = shared.work.wait(state).unwrap_or_else(|p| p.into_inner());
                state.idle -= 1;
            }
        };
        call();
    }
}

/// Lowers the calling thread's scheduling priority to [`CHUNK_NICE`]. On Linux a
/// nice value belongs to a thread, so only this thread is affected.
fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority on the calling thread (who = 0) has no memory effects.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, CHUNK_NICE);
    }
}

/// The nice value of the calling thread (Linux; 0 elsewhere).
pub fn thread_nice() -> i32 {
    #[cfg(target_os = "linux")]
    // SAFETY: getpriority on the calling thread (who = 0) only reads.
    unsafe {
        libc::getpriority(libc::PRIO_PROCESS, 0)
    }
    #[cfg(not(target_os = "linux"))]
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_run_on_low_priority_threads_that_nothing_else_shares() {
        let pool = ChunkPool::new(2);
        let before = tokio::task::spawn_blocking(thread_nice).await.unwrap();
        let (nice, name) = pool
            .run(|| {
                (
                    thread_nice(),
                    std::thread::current().name().map(String::from),
                )
            })
            .await
            .unwrap();
        assert_eq!(nice, CHUNK_NICE);
        assert_eq!(name.as_deref(), Some("peergrid-chunk-0"));
        // Tokio's blocking threads keep their priority.
        for _ in 0..4 {
            let after = tokio::task::spawn_blocking(thread_nice).await.unwrap();
            assert_eq!(after, before);
        }
        assert_eq!(thread_nice(), before, "nor does the runtime's own thread");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pool_runs_calls_side_by_side_up_to_its_size_and_no_more() {
        let pool = Arc::new(ChunkPool::new(2));
        let barrier = Arc::new(std::sync::Barrier::new(2));
        // Two calls that each wait for the other: they finish only if both run at once.
        let calls: Vec<_> = (0..2)
            .map(|i| {
                let (pool, barrier) = (pool.clone(), barrier.clone());
                tokio::spawn(async move {
                    pool.run(move || {
                        barrier.wait();
                        i
                    })
                    .await
                })
            })
            .collect();
        for (i, call) in calls.into_iter().enumerate() {
            assert_eq!(call.await.unwrap(), Ok(i));
        }
        assert_eq!(pool.threads(), 2);
        // Later calls reuse the threads.
        for i in 0..5 {
            assert_eq!(pool.run(move || i * 2).await, Ok(i * 2));
        }
        assert_eq!(pool.threads(), 2);
    }

    #[tokio::test]
    async fn a_panicking_call_is_reported_and_the_thread_goes_on() {
        let pool = ChunkPool::new(1);
        assert_eq!(
            pool.run(|| panic!("a bad executor")).await,
            Err::<(), _>(PoolError::Panicked)
        );
        assert_eq!(pool.run(|| 7).await, Ok(7));
        assert_eq!(pool.threads(), 1);
    }
}
