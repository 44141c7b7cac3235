//! Query cancellation (PostgreSQL docs §55.2.9 "Canceling Requests in Progress").
//!
//! Clients get the proxy's own random `BackendKeyData`, never a compute's: computes' pids and
//! secrets stay inside. A `CancelRequest` with a key the proxy handed out is forwarded, with
//! the compute's key, to the server connection the client holds at that moment (with
//! transaction pooling it changes from transaction to transaction; between transactions
//! there is nothing to cancel). An unknown key is dropped without a word, as Postgres drops it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::pqproto::{CancelKey, fe};

/// Where a cancel goes: a compute and the key of the backend there.
pub type CancelTarget = (SocketAddr, CancelKey);

#[derive(Debug, Clone, Copy)]
struct Entry {
    secret: i32,
    target: Option<CancelTarget>,
}

/// The keys handed out to live sessions.
#[derive(Default)]
pub struct CancelMap {
    sessions: Mutex<HashMap<i32, Entry>>,
}

/// Holds a client's key; removes it from the map when the session ends.
#[must_use = "the key is forgotten when this guard drops"]
pub struct CancelGuard {
    map: Arc<CancelMap>,
    pid: i32,
}

impl CancelGuard {
    /// Points the client's key at the server backend it now holds (`None`: none).
    pub fn retarget(&self, target: Option<CancelTarget>) {
        if let Some(entry) = self.map.lock().get_mut(&self.pid) {
            entry.target = target;
        }
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        self.map.lock().remove(&self.pid);
    }
}

impl CancelMap {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Entry>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes a fresh random key for a session, pointing at `target`.
    pub fn register(self: &Arc<Self>, target: Option<CancelTarget>) -> (CancelKey, CancelGuard) {
        let mut map = self.lock();
        loop {
            let ours = CancelKey {
                pid: rand::random::<i32>() & i32::MAX,
                secret: rand::random(),
            };
            if ours.pid == 0 || map.contains_key(&ours.pid) {
                continue;
            }
            map.insert(
                ours.pid,
                Entry {
                    secret: ours.secret,
                    target,
                },
            );
            return (
                ours,
                CancelGuard {
                    map: self.clone(),
                    pid: ours.pid,
                },
            );
        }
    }

    /// Forwards a cancel for `key` if it is one of ours and its session holds a server
    /// connection; otherwise does nothing. Returns whether it was forwarded.
    pub async fn cancel(&self, key: CancelKey) -> bool {
        let target = {
            let map = self.lock();
            match map.get(&key.pid) {
                Some(e)
                    if bool::from(subtle::ConstantTimeEq::ct_eq(
                        &e.secret.to_be_bytes()[..],
                        &key.secret.to_be_bytes()[..],
                    )) =>
                {
                    e.target
                }
                _ => None,
            }
        };
        match target {
            Some((addr, key)) => send_cancel(addr, key).await,
            None => false,
        }
    }
}

/// Sends a `CancelRequest` for backend `key` to the compute at `addr`. Returns whether it
/// was delivered. Postgres reads it before any authentication, so no TLS is needed.
pub async fn send_cancel(addr: SocketAddr, key: CancelKey) -> bool {
    let forward = async {
        let mut s = TcpStream::connect(addr).await?;
        let mut msg = Vec::with_capacity(16);
        fe::cancel_request(&mut msg, key);
        s.write_all(&msg).await?;
        // Postgres closes the connection once it has read the request.
        let mut sink = [0u8; 16];
        while s.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    match tokio::time::timeout(Duration::from_secs(5), forward).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::info!(compute = %addr, error = %e, "cancel not delivered");
            false
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_keys_and_idle_sessions_are_ignored_and_guards_forget() {
        let map = Arc::new(CancelMap::default());
        let compute: SocketAddr = (std::net::Ipv4Addr::LOCALHOST, 9).into();
        let (ours, guard) = map.register(Some((compute, CancelKey { pid: 1, secret: 2 })));
        assert!(ours.pid > 0);
        assert!(
            !map.cancel(CancelKey {
                pid: ours.pid,
                secret: ours.secret.wrapping_add(1)
            })
            .await
        );
        guard.retarget(None);
        assert!(!map.cancel(ours).await, "no server held: nothing to cancel");
        assert_eq!(map.lock().len(), 1);
        drop(guard);
        assert!(map.lock().is_empty());
        assert!(!map.cancel(ours).await);
    }
}
