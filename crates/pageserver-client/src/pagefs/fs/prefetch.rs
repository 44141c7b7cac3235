//! Background readahead: the window a sequential reader will want next, fetched while it
//! still reads the current one, so the page store's round trip overlaps the reading.
//!
//! A read queues a window (see the `readahead` module) only while a [`prefetcher`] runs for
//! the mount. The prefetcher fetches queued windows, a few at a time, through the same
//! registered fetch as a reader (see the `fetch` module): a reader that gets to one of its
//! blocks first waits for it instead of asking again, a write that races it wins, and its
//! pages go to the local cache. The queue is short and drops its oldest window when full;
//! a window nobody fetched is fetched by the reader when it misses, as without a prefetcher.

use std::collections::VecDeque;
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::PageFs;
use super::fetch::{For, Need};

/// Windows waiting to be fetched, at most.
const QUEUE: usize = 16;

/// Windows fetched at once, at most.
pub(super) const PARALLEL: usize = 4;

/// The queue of windows to fetch in the background.
#[derive(Debug, Default)]
pub(super) struct Prefetch {
    running: AtomicBool,
    queue: Mutex<VecDeque<(u64, Range<u64>)>>,
    wanted: Notify,
}

impl Prefetch {
    /// Whether a prefetcher runs (else nothing is queued).
    pub(super) fn running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }

    /// Queues blocks `blocks` of `ino`, dropping the oldest window if the queue is full.
    pub(super) fn push(&self, ino: u64, blocks: Range<u64>) {
        {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            if q.len() >= QUEUE {
                q.pop_front();
            }
            q.push_back((ino, blocks));
        }
        self.wanted.notify_one();
    }

    fn pop(&self) -> Option<(u64, Range<u64>)> {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }
}

/// Says the prefetcher stopped, however its task ends.
struct Running(Arc<PageFs>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.prefetch.running.store(false, Ordering::Relaxed);
    }
}

/// The task that fetches the windows sequential reads of `fs` queue, at most [`PARALLEL`]
/// at once, until aborted (it holds a clone of `fs`); aborting it cancels the fetches in
/// flight. Reads queue windows from this call on, not only once the task first runs. One
/// per mount: the task of a second call returns at once.
pub fn prefetcher(fs: Arc<PageFs>) -> impl Future<Output = ()> + Send + 'static {
    let first = !fs.prefetch.running.swap(true, Ordering::Relaxed);
    let running = first.then(|| Running(fs.clone()));
    async move {
        let Some(_running) = running else {
            return;
        };
        let mut tasks = JoinSet::new();
        loop {
            while tasks.try_join_next().is_some() {}
            if tasks.len() >= PARALLEL {
                tasks.join_next().await;
                continue;
            }
            match fs.prefetch.pop() {
                Some((ino, blocks)) => {
                    let fs = fs.clone();
                    tasks.spawn(async move { fs.prefetch_window(ino, blocks).await });
                }
                None => fs.prefetch.wanted.notified().await,
            }
        }
    }
}

impl PageFs {
    /// Fetches `blocks` of `ino` that nobody holds or fetches, into the cache.
    async fn prefetch_window(&self, ino: u64, blocks: Range<u64>) {
        let need = Need {
            blocks: Vec::new(),
            ahead: blocks,
        };
        match self.fetch_for(ino, need, For::Background).await {
            Ok(fetched) => self.done(fetched),
            // The reader fetches these blocks itself when it gets there.
            Err(e) => tracing::debug!(ino, error = ?e, "background readahead failed"),
        }
    }
}
