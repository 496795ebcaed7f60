//! The events aggregate: connection events reported by agents (checked against their
//! host's recent views: [`check`]), stored on the event connection, queried, followed,
//! pruned after the retention. Never takes the state's lock for database work.

use std::sync::{Arc, MutexGuard};

use tokio::sync::{broadcast, mpsc};
use tracing::debug;

use super::{State, limits};
use crate::model::{ConnectionEvent, EventFilter, EventRecord};
use crate::store::EventStore;
use crate::{Error, now_ms, shown};

mod check;

use check::MAX_EVENTS_PER_MESSAGE;
pub(super) use check::{NameSet, VIEWS_KEPT};

impl State {
    fn event_store(&self) -> MutexGuard<'_, EventStore> {
        self.event_store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores an agent's events (as its own host's: see `check`) and passes them to
    /// followers; returns how many were stored. Events naming what the host's view does
    /// not know are dropped (recorded, aggregated, in the audit trail). Over the agent's
    /// quota, nothing is stored (RESOURCE_EXHAUSTED: send again later). Blocking
    /// (SQLite): call off the async workers. Never takes the state's lock for the
    /// database work.
    pub fn report_events(
        &self,
        agent_id: &str,
        mut events: Vec<ConnectionEvent>,
    ) -> Result<u64, Error> {
        if events.is_empty() {
            return Ok(0);
        }
        if events.len() > MAX_EVENTS_PER_MESSAGE {
            return Err(Error::InvalidArgument(format!(
                "{} events in one message (at most {})",
                events.len(),
                MAX_EVENTS_PER_MESSAGE
            )));
        }
        let now = now_ms();
        let (host, names) = {
            let mut g = self.lock();
            let Some(a) = g
                .agents
                .get_mut(agent_id)
                .filter(|a| a.revoked_ms.is_none())
            else {
                return Err(Error::Unauthenticated(format!(
                    "agent {} was revoked",
                    shown(agent_id)
                )));
            };
            a.last_seen_ms = now;
            let host = a.host.clone();
            let names: Vec<Arc<NameSet>> = g
                .hosts
                .get(&host)
                .map(|h| h.names.iter().cloned().collect())
                .unwrap_or_default();
            (host, names)
        };
        if !self.guard.take_events(agent_id, events.len(), now) {
            debug!(agent = agent_id, host = %host, events = events.len(), "event quota exceeded");
            return Err(Error::ResourceExhausted(format!(
                "agent {} sends more events than its quota ({} a second): nothing of this \
                 message was stored; send it again later",
                shown(agent_id),
                self.guard.event_rate().per_sec
            )));
        }
        let sets: Vec<&NameSet> = names.iter().map(|n| &**n).collect();
        let mut rejected = 0u64;
        let mut first_reason = None;
        events.retain_mut(|ev| match check::check(ev, &host, &sets) {
            Ok(()) => true,
            Err(why) => {
                rejected += 1;
                first_reason.get_or_insert(why);
                false
            }
        });
        if let Some(why) = first_reason {
            self.refused(
                "agent_events_rejected",
                format!("agent:{agent_id}"),
                host.clone(),
                format!("{rejected} events not stored: {why}"),
            );
        }
        if events.is_empty() {
            return Ok(0);
        }
        // PostgreSQL: on a connection of the writers' pool, without the event store's
        // lock, so that several agents' messages are stored at once.
        let writers = self.event_store().writers();
        let stored = match writers {
            Some(w) => w.insert_events(agent_id, now, events)?,
            None => self.event_store().insert_events(agent_id, now, events)?,
        };
        let n = stored.len() as u64;
        debug!(agent = agent_id, host = %host, stored = n, "events stored");
        for e in stored {
            let _ = self.events.send(e);
        }
        Ok(n)
    }

    /// Sets an agent's event quota (default: `DEFAULT_EVENT_RATE`).
    pub fn set_event_quota(&self, burst: f64, per_sec: f64) {
        self.guard.set_event_rate(limits::Rate { burst, per_sec });
    }

    pub fn query_events(&self, f: &EventFilter, limit: u32) -> Result<Vec<EventRecord>, Error> {
        let limit = if limit == 0 {
            10_000
        } else {
            limit.min(10_000)
        };
        self.event_store().query_events(f, limit)
    }

    /// Events matching `filter` as they are stored, until shutdown or until the
    /// follower's credential stops being valid (revoked, expired, its user deleted:
    /// checked before every event and every second; then the stream ends with
    /// UNAUTHENTICATED). A follower that lags behind skips what it missed;
    /// `query_events` has it.
    pub fn follow_events(
        self: &Arc<Self>,
        filter: EventFilter,
        who: crate::auth::Principal,
    ) -> mpsc::Receiver<Result<EventRecord, Error>> {
        let mut rx = self.events.subscribe();
        let mut closing = self.closing.subscribe();
        let (tx, out) = mpsc::channel(1024);
        let state = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            let valid = |who: &crate::auth::Principal| {
                state
                    .upgrade()
                    .ok_or_else(|| Error::Unavailable("the controller is stopping".into()))
                    .and_then(|s| s.recheck(who))
            };
            loop {
                tokio::select! {
                    _ = async {
                        loop {
                            let closed = *closing.borrow_and_update();
                            if closed || closing.changed().await.is_err() {
                                break;
                            }
                        }
                    } => break,
                    _ = tx.closed() => break,
                    _ = tick.tick() => {
                        if let Err(s) = valid(&who) {
                            let _ = tx.send(Err(s)).await;
                            break;
                        }
                    }
                    r = rx.recv() => match r {
                        Ok(e) => {
                            if !filter.matches(&e) {
                                continue;
                            }
                            if let Err(s) = valid(&who) {
                                let _ = tx.send(Err(s)).await;
                                break;
                            }
                            if tx.send(Ok(e)).await.is_err() {
                                break;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                }
            }
        });
        out
    }

    /// Deletes events older than the retention.
    pub fn prune_events(&self) -> Result<usize, Error> {
        let before = now_ms() - i64::from(self.retention_days) * 86_400_000;
        self.event_store().prune_events(before)
    }
}
