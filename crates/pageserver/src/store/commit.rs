//! The commit thread: the only writer of the log, of generations and of seqs.
//!
//! Each round takes every operation waiting (up to [`GROUP_BYTES`]), checks each write's
//! generation and gives it the next seq (as if the ones before it in the round had
//! committed), encodes them all, appends them with one `fdatasync`, and only then makes them
//! visible and answers: group commit. Acquires are log records in the same stream, so a
//! write and an acquire are ordered the same way in the log, in memory and in the answers.
//! Creating and deleting timelines rewrite the manifest and happen between rounds.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use lakebed_pageserver_api::{Generation, Seq, TimelineId};

use super::error::StoreError;
use super::memtable::Memtable;
use super::wal::{self, Wal};
use super::{Inner, StoreError as E, Timeline, TimelineInfo, lock, now_ms};

/// A round stops taking operations once their bytes pass this.
const GROUP_BYTES: usize = 64 << 20;
/// Frozen memtables waiting for the flusher past which writers wait.
const MAX_FROZEN: usize = 4;

type Reply<T> = SyncSender<Result<T, StoreError>>;

/// One operation for the commit thread.
pub enum Op {
    Write {
        id: TimelineId,
        generation: Generation,
        puts: Vec<(Bytes, Bytes)>,
        deletes: Vec<Bytes>,
        reply: Reply<Seq>,
    },
    Acquire {
        id: TimelineId,
        reply: Reply<Generation>,
    },
    Create {
        id: TimelineId,
        parent: Option<(TimelineId, Option<Seq>)>,
        reply: Reply<TimelineInfo>,
    },
    Delete {
        id: TimelineId,
        reply: Reply<()>,
    },
    /// Freeze the active memtable now (for [`super::Store::flush`]).
    Freeze {
        reply: Reply<()>,
    },
}

impl Op {
    fn bytes(&self) -> usize {
        match self {
            Op::Write { puts, deletes, .. } => {
                puts.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
                    + deletes.iter().map(Bytes::len).sum::<usize>()
            }
            _ => 0,
        }
    }
}

/// What a round will apply once its records are durable.
enum Pending {
    Write {
        tid: u64,
        seq: u64,
        puts: Vec<(Bytes, Bytes)>,
        deletes: Vec<Bytes>,
        reply: Reply<Seq>,
    },
    Acquire {
        tid: u64,
        generation: u32,
        reply: Reply<Generation>,
    },
}

/// One round of group commit being assembled.
#[derive(Default)]
struct Round {
    records: Vec<u8>,
    pending: Vec<Pending>,
    /// Per timeline: generation and last seq as if the round so far had committed.
    seen: HashMap<u64, (u32, u64)>,
    time_ms: u64,
}

/// Runs the commit thread until the store is dropped.
pub fn run(inner: &Arc<Inner>, mut wal: Wal, ops: &Receiver<Op>) {
    loop {
        // Idle for `idle_flush`: a memtable holding anything is frozen (and so flushed to a
        // layer), so a page store at rest gives back the memory of its newest writes, and a
        // restart has little log to replay.
        let first = match ops.recv_timeout(inner.options.idle_flush) {
            Ok(op) => op,
            Err(RecvTimeoutError::Timeout) => {
                let idle = inner
                    .read_state()
                    .active
                    .read()
                    .is_ok_and(|m| !m.is_empty());
                if idle && let Err(e) = freeze(inner, &mut wal) {
                    tracing::warn!(error = %e, "cannot freeze the idle memtable (will retry)");
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut bytes = first.bytes();
        let mut batch = vec![first];
        while bytes < GROUP_BYTES {
            match ops.try_recv() {
                Ok(op) => {
                    bytes += op.bytes();
                    batch.push(op);
                }
                Err(_) => break,
            }
        }
        let mut round = Round {
            time_ms: now_ms(),
            ..Round::default()
        };
        // With the flusher failing (a full disk) and its backlog at its limit, writes are
        // refused with its error rather than held: the caller learns why at once, and they
        // go through again once the flusher catches up.
        let refusal = backlog_refusal(inner);
        for op in batch {
            match op {
                Op::Write { reply, .. } if refusal.is_some() => {
                    if let Some(e) = &refusal {
                        let _ = reply.send(Err(duplicate(e)));
                    }
                }
                Op::Write { .. } | Op::Acquire { .. } => round.add(inner, op),
                Op::Create { id, parent, reply } => {
                    commit(inner, &mut wal, std::mem::take(&mut round));
                    let _ = reply.send(create(inner, &id, parent));
                }
                Op::Delete { id, reply } => {
                    commit(inner, &mut wal, std::mem::take(&mut round));
                    let _ = reply.send(delete(inner, &id));
                }
                Op::Freeze { reply } => {
                    commit(inner, &mut wal, std::mem::take(&mut round));
                    let _ = reply.send(freeze(inner, &mut wal));
                }
            }
        }
        commit(inner, &mut wal, round);
        let full = {
            let st = inner.read_state();
            let bytes = st.active.read().map_or(0, |m| m.bytes());
            bytes >= inner.options.memtable_bytes()
        };
        if full && let Err(e) = freeze(inner, &mut wal) {
            tracing::warn!(error = %e, "cannot freeze the memtable (will retry)");
        }
        wait_for_flusher(inner);
    }
}

impl Round {
    /// Checks `op` against the state (and the round so far) and encodes its record; a
    /// refused op is answered at once.
    fn add(&mut self, inner: &Inner, op: Op) {
        let id = match &op {
            Op::Write { id, .. } | Op::Acquire { id, .. } => id.clone(),
            _ => return,
        };
        let current = {
            let st = inner.read_state();
            st.tid(&id).and_then(|tid| {
                let t = st
                    .timelines
                    .get(&tid)
                    .ok_or_else(|| E::NotFound(id.clone()))?;
                Ok((tid, t.generation, t.last_seq))
            })
        };
        match op {
            Op::Write {
                generation,
                puts,
                deletes,
                reply,
                ..
            } => {
                let checked = current.and_then(|(tid, g, last)| {
                    let (g, last) = self.seen.get(&tid).copied().unwrap_or((g, last));
                    let current = Generation(g);
                    if generation < current {
                        return Err(E::StaleGeneration {
                            timeline: id.clone(),
                            sent: generation,
                            current,
                        });
                    }
                    if generation > current {
                        return Err(E::NotAcquired {
                            timeline: id.clone(),
                            sent: generation,
                            current,
                        });
                    }
                    let seq = last.checked_add(1).ok_or_else(|| E::Exhausted {
                        timeline: id.clone(),
                        what: "seq",
                    })?;
                    Ok((tid, g, seq))
                });
                match checked {
                    Ok((tid, g, seq)) => {
                        wal::encode_write(
                            &mut self.records,
                            tid,
                            seq,
                            self.time_ms,
                            &puts,
                            &deletes,
                        );
                        self.seen.insert(tid, (g, seq));
                        self.pending.push(Pending::Write {
                            tid,
                            seq,
                            puts,
                            deletes,
                            reply,
                        });
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Op::Acquire { reply, .. } => {
                let checked = current.and_then(|(tid, g, last)| {
                    let (g, last) = self.seen.get(&tid).copied().unwrap_or((g, last));
                    let next = g.checked_add(1).ok_or_else(|| E::Exhausted {
                        timeline: id.clone(),
                        what: "generation",
                    })?;
                    Ok((tid, next, last))
                });
                match checked {
                    Ok((tid, generation, last)) => {
                        wal::encode_acquire(&mut self.records, tid, generation);
                        self.seen.insert(tid, (generation, last));
                        self.pending.push(Pending::Acquire {
                            tid,
                            generation,
                            reply,
                        });
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            _ => {}
        }
    }
}

/// Makes a round durable with one append, then visible, then answers it.
fn commit(inner: &Inner, wal: &mut Wal, round: Round) {
    if round.pending.is_empty() {
        return;
    }
    if let Err(e) = wal.append(&round.records) {
        tracing::error!(error = %e, "log append failed: the round's writes are refused");
        for p in round.pending {
            match p {
                Pending::Write { reply, .. } => {
                    let _ = reply.send(Err(duplicate(&e)));
                }
                Pending::Acquire { reply, .. } => {
                    let _ = reply.send(Err(duplicate(&e)));
                }
            }
        }
        return;
    }
    inner.log_syncs.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("lakebed_pagestore_log_syncs_total").increment(1);
    let mut answers = Vec::with_capacity(round.pending.len());
    {
        let mut st = inner.write_state();
        let active = st.active.clone();
        let mut mem = active
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for p in round.pending {
            match p {
                Pending::Write {
                    tid,
                    seq,
                    puts,
                    deletes,
                    reply,
                } => {
                    // The timeline exists: only this thread deletes timelines.
                    if let Some(t) = st.timelines.get_mut(&tid) {
                        t.last_seq = seq;
                        t.note_commit(seq, round.time_ms, inner.options.history_retention);
                    }
                    for (k, v) in puts {
                        mem.insert(tid, k, seq, Some(v));
                    }
                    for k in deletes {
                        mem.insert(tid, k, seq, None);
                    }
                    inner.writes_committed.fetch_add(1, Ordering::Relaxed);
                    answers.push(Box::new(move || {
                        let _ = reply.send(Ok(Seq(seq)));
                    }) as Box<dyn FnOnce()>);
                }
                Pending::Acquire {
                    tid,
                    generation,
                    reply,
                } => {
                    if let Some(t) = st.timelines.get_mut(&tid) {
                        t.generation = generation;
                    }
                    answers.push(Box::new(move || {
                        let _ = reply.send(Ok(Generation(generation)));
                    }));
                }
            }
        }
    }
    for answer in answers {
        answer();
    }
}

/// The same error again, for each caller of a failed round (and for writers refused while
/// the flusher fails).
pub(super) fn duplicate(e: &StoreError) -> StoreError {
    match e {
        E::DiskFull { path } => E::DiskFull { path: path.clone() },
        E::Io { path, error } => E::Io {
            path: path.clone(),
            error: std::io::Error::new(error.kind(), error.to_string()),
        },
        other => E::Io {
            path: std::path::PathBuf::new(),
            error: std::io::Error::other(other.to_string()),
        },
    }
}

/// Freezes the active memtable behind a new log segment, and wakes the flusher. Does
/// nothing if neither holds anything; an empty memtable is frozen when the log segment is
/// not empty (it holds acquires, or writes of timelines deleted since), so that flushing it
/// lets that segment go.
fn freeze(inner: &Inner, wal: &mut Wal) -> Result<(), StoreError> {
    {
        let st = inner.read_state();
        if st.active.read().is_ok_and(|m| m.is_empty()) && wal.is_empty() {
            return Ok(());
        }
    }
    let segment = wal.rotate()?;
    {
        let mut st = inner.write_state();
        // The old memtable keeps its contents under the same Arc, so a reader that took it
        // before the freeze still sees everything.
        let old = std::mem::replace(&mut st.active, Arc::new(RwLock::new(Memtable::new())));
        old.write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .end_segment = Some(segment);
        st.frozen.push(old);
    }
    inner.wake_flusher();
    Ok(())
}

/// Holds the commit thread while too many frozen memtables wait for the flusher: memory
/// stays bounded and writers slow to the speed of the disk. Returns at once while the
/// flusher is failing (see [`backlog_refusal`]): waiting would hold every writer until
/// space returns.
fn wait_for_flusher(inner: &Inner) {
    let (m, cv) = &inner.flush_signal;
    let mut g = lock(m);
    while inner.read_state().frozen.len() > MAX_FROZEN
        && lock(&inner.flush_failure).is_none()
        && !inner.shutdown.load(Ordering::SeqCst)
    {
        g = cv
            .wait_timeout(g, std::time::Duration::from_millis(100))
            .map(|(g, _)| g)
            .unwrap_or_else(|e| e.into_inner().0);
    }
}

/// The flusher's last error, if it is failing while its backlog is at its limit: what
/// writes are refused with until it catches up.
fn backlog_refusal(inner: &Inner) -> Option<StoreError> {
    if inner.read_state().frozen.len() <= MAX_FROZEN {
        return None;
    }
    lock(&inner.flush_failure).as_ref().map(duplicate)
}

fn create(
    inner: &Inner,
    id: &TimelineId,
    parent: Option<(TimelineId, Option<Seq>)>,
) -> Result<TimelineInfo, StoreError> {
    let retention = inner.options.history_retention;
    let info = {
        let mut st = inner.write_state();
        if st.ids.contains_key(id) {
            return Err(E::AlreadyExists(id.clone()));
        }
        let (generation, last_seq, parent_link) = match &parent {
            None => (0, 0, None),
            Some((pid, seq)) => {
                let ptid = st
                    .ids
                    .get(pid)
                    .copied()
                    .ok_or_else(|| E::ParentNotFound(pid.clone()))?;
                let p = st.by_tid(ptid)?;
                let at = seq.map_or(p.last_seq, |s| s.0);
                if at > p.last_seq {
                    return Err(E::SeqBeyondLast {
                        timeline: pid.clone(),
                        asked: Seq(at),
                        last: Seq(p.last_seq),
                    });
                }
                let horizon = st.effective_horizon(p, retention)?;
                if at < horizon {
                    return Err(E::BelowHorizon {
                        timeline: pid.clone(),
                        asked: Seq(at),
                        horizon: Seq(horizon),
                    });
                }
                // The branch starts at its parent's generation, so its own generations are
                // all above any that wrote what it inherits: a client that derives names from
                // its generation (pagefs's inode numbers) cannot collide.
                (p.generation, at, Some((ptid, at)))
            }
        };
        let tid = st.next_tid;
        st.next_tid += 1;
        let t = Timeline {
            id: id.clone(),
            tid,
            generation,
            last_seq,
            parent: parent_link,
            layers: Vec::new(),
            gc_horizon: 0,
            commit_times: vec![(last_seq, now_ms())],
            removed: 0,
        };
        st.ids.insert(id.clone(), tid);
        st.timelines.insert(tid, t);
        let t = st.by_tid(tid)?;
        st.info(t)?
    };
    if let Err(e) = inner.save_manifest() {
        let mut st = inner.write_state();
        if let Some(tid) = st.ids.remove(id) {
            st.timelines.remove(&tid);
        }
        return Err(e);
    }
    Ok(info)
}

fn delete(inner: &Inner, id: &TimelineId) -> Result<(), StoreError> {
    let removed = {
        let mut st = inner.write_state();
        let tid = st.tid(id)?;
        let mut children: Vec<String> = st
            .timelines
            .values()
            .filter(|t| t.parent.is_some_and(|(p, _)| p == tid))
            .map(|t| t.id.to_string())
            .collect();
        if !children.is_empty() {
            children.sort();
            return Err(E::HasBranches {
                timeline: id.clone(),
                children: children.join(", "),
            });
        }
        st.ids.remove(id);
        let removed = st.timelines.remove(&tid);
        if let Ok(mut m) = st.active.write() {
            m.remove_timeline(tid);
        }
        removed
    };
    if let Err(e) = inner.save_manifest() {
        // Put it back: the timeline is still there on disk.
        if let Some(t) = removed {
            let mut st = inner.write_state();
            st.ids.insert(t.id.clone(), t.tid);
            st.timelines.insert(t.tid, t);
        }
        return Err(e);
    }
    if let Some(t) = removed {
        for l in &t.layers {
            if let Err(e) = std::fs::remove_file(l.path()) {
                tracing::warn!(file = %l.path().display(), error = %e, "cannot remove a deleted timeline's layer");
            }
        }
    }
    Ok(())
}
