//! Query cancellation (PostgreSQL docs §55.2.9 "Canceling Requests in Progress").
//!
//! Clients get the proxy's own random `BackendKeyData`, never the compute's: a compute's pid
//! and secret stay inside. A `CancelRequest` with a key the proxy handed out is forwarded, with
//! the compute's key, to that compute; an unknown key is dropped without a word, as Postgres
//! drops it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::pqproto::{CancelKey, fe};

#[derive(Debug, Clone, Copy)]
struct Target {
    secret: i32,
    compute: SocketAddr,
    key: CancelKey,
}

/// The keys handed out to live sessions.
#[derive(Default)]
pub struct CancelMap {
    sessions: Mutex<HashMap<i32, Target>>,
}

/// Removes its key from the map when the session ends.
#[must_use = "the key is forgotten when this guard drops"]
pub struct CancelGuard {
    map: Arc<CancelMap>,
    pid: i32,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        self.map.lock().remove(&self.pid);
    }
}

impl CancelMap {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Target>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes a fresh random key for a session on `compute` whose own key is `key`.
    pub fn register(
        self: &Arc<Self>,
        compute: SocketAddr,
        key: CancelKey,
    ) -> (CancelKey, CancelGuard) {
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
                Target {
                    secret: ours.secret,
                    compute,
                    key,
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

    /// Forwards a cancel for `key` if it is one of ours; otherwise does nothing.
    /// Returns whether it was forwarded.
    pub async fn cancel(&self, key: CancelKey) -> bool {
        let target = {
            let map = self.lock();
            match map.get(&key.pid) {
                Some(t)
                    if subtle::ConstantTimeEq::ct_eq(
                        &t.secret.to_be_bytes()[..],
                        &key.secret.to_be_bytes()[..],
                    )
                    .into() =>
                {
                    *t
                }
                _ => return false,
            }
        };
        let forward = async {
            let mut s = TcpStream::connect(target.compute).await?;
            let mut msg = Vec::with_capacity(16);
            fe::cancel_request(&mut msg, target.key);
            s.write_all(&msg).await?;
            // Postgres closes the connection once it has read the request.
            let mut sink = [0u8; 16];
            while s.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        };
        match tokio::time::timeout(Duration::from_secs(5), forward).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::info!(compute = %target.compute, error = %e, "cancel not delivered");
                false
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_keys_are_ignored_and_guards_forget() {
        let map = Arc::new(CancelMap::default());
        let compute: SocketAddr = "127.0.0.1:9".parse().unwrap_or_else(|_| unreachable!());
        let (ours, guard) = map.register(compute, CancelKey { pid: 1, secret: 2 });
        assert!(ours.pid > 0);
        assert!(
            !map.cancel(CancelKey {
                pid: ours.pid,
                secret: ours.secret.wrapping_add(1)
            })
            .await
        );
        assert_eq!(map.lock().len(), 1);
        drop(guard);
        assert!(map.lock().is_empty());
        assert!(!map.cancel(ours).await);
    }
}
