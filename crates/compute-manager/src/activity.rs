//! The autosuspend monitor.
//!
//! Every `manager.activity_poll_interval` it looks at each active compute through
//! `pg_stat_activity` (see [`sql::activity`]). Any client session (idle-in-transaction ones
//! included), running autovacuum worker or WAL sender restarts the idle clock. A compute idle
//! for the endpoint's whole `suspend_timeout`, outside every keep-warm window, is suspended:
//! CHECKPOINT, a re-check that it is still idle, fast shutdown (see [`Manager`]'s stop).
//!
//! The monitor never waits for a busy endpoint: if a wake or suspend holds its lifecycle
//! lock, that endpoint is skipped until the next tick.

use std::time::Duration;

use chrono::Utc;
use lakebed_config::{EndpointName, SuspendTimeout};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior, interval, timeout};

use crate::compute::Decision;
use crate::manager::{Lifecycle, Manager, Slot, StopOutcome, StopReason};
use crate::postgres::sql::{self, QUERY_TIMEOUT};

/// Starts the monitor; it runs until [`Manager::shutdown`] begins.
pub fn spawn_monitor(manager: Manager) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = interval(manager.poll_interval());
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = manager.closing().cancelled() => return,
                _ = tick.tick() => {}
            }
            for (name, slot) in manager.slots() {
                check(&manager, &name, &slot).await;
            }
        }
    })
}

/// One check of one endpoint.
async fn check(manager: &Manager, name: &EndpointName, slot: &Slot) {
    let Ok(mut life) = slot.life.try_lock() else {
        return; // starting or stopping: look again next tick
    };
    let Lifecycle::Up(run) = &mut *life else {
        return;
    };
    if let Some(reason) = run.exited() {
        manager.crashed(name, slot, &mut life, reason).await;
        return;
    }
    let Ok(endpoint) = manager.catalog().endpoint(name) else {
        return; // being deleted
    };
    if let Some(reseal) = run.pagefs.as_mut().and_then(|fs| fs.finished_reseal()) {
        manager.audit_reseal(&endpoint, reseal);
    }
    if run.client.as_ref().is_none_or(|c| c.is_closed()) {
        run.client = run.postmaster.connect_system().await.ok();
    }
    let seen = match &run.client {
        Some(client) => match timeout(QUERY_TIMEOUT, sql::activity(client)).await {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "pg_stat_activity took longer than {QUERY_TIMEOUT:?}"
            )),
        },
        None => Err("cannot connect as the system role".to_owned()),
    };
    let now = Instant::now();
    let decision = match seen {
        Err(error) => {
            // What we cannot see, we do not stop.
            run.last_activity = now;
            Decision::Unreachable { error }
        }
        Ok(activity) if activity.blocks_suspend() => {
            run.last_activity = now;
            Decision::Busy { activity }
        }
        Ok(_) => {
            let idle = now - run.last_activity;
            let policy = &endpoint.policy;
            match policy.suspend_timeout {
                SuspendTimeout::Never => Decision::Never,
                SuspendTimeout::After(limit) => match policy.keep_warm_at(Utc::now()) {
                    Some(window) => Decision::KeepWarm {
                        window: window.to_string(),
                    },
                    None if idle < limit => Decision::Idle {
                        idle_ms: ms(idle),
                        timeout_ms: ms(limit),
                    },
                    None => match manager
                        .stop_locked(name, slot, &mut life, StopReason::Idle)
                        .await
                    {
                        StopOutcome::Aborted(activity) => Decision::Aborted { activity },
                        StopOutcome::Stopped | StopOutcome::NotRunning => {
                            Decision::Suspended { idle_ms: ms(idle) }
                        }
                    },
                },
            }
        }
    };
    slot.record_decision(decision);
}

fn ms(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}
