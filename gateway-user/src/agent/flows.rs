//! Ending flows: the agent's half of a flow's lifetime.
//!
//! The kernel opens flows and records what they see (counters, reply, FIN, RST) but never
//! ends one by itself except on revocation (a policy change: it sends that flow_end). The
//! agent ends the rest:
//!
//! * **idle**: no packet either way for the state's timeout (`[flow_timeouts]`); activity
//!   is told by counters that moved between two looks, because the fast path does not
//!   read the clock;
//! * **evicted**: the table dropped it to make room. The agent knows every flow it saw (in
//!   a scan or a flow_start record); one gone from the table without a revocation record
//!   was evicted, and its flow_end carries the last counters the agent saw.
//!
//! So every flow_start has exactly one flow_end, with the final (or, after an eviction,
//! the last known) counters — never at a FIN or RST an attacker can forge.

use super::config::FlowTimeouts;
use crate::{dataplane::FlowMaps, names_map::NameMaps};
use anyhow::Result;
use gateway_common::{Event, EventKind, FlowKey, FlowState, FragKey, event::FlowEndCause};
use std::collections::HashMap;

/// What the agent last saw of a flow.
struct Seen {
    state: FlowState,
    /// Packets both ways at the last look, and when that total last changed (boot ns).
    total: u64,
    active_ns: u64,
}

/// What one scan did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanStats {
    pub live: u64,
    pub idle_ended: u64,
    pub evicted: u64,
    pub frags_expired: u64,
}

#[derive(Default)]
pub struct Reaper {
    flows: HashMap<FlowKey, Seen>,
    /// Fragment datagrams and when the agent first saw them.
    frags: HashMap<FragKey, u64>,
    /// Totals since start.
    pub evicted_total: u64,
    pub idle_total: u64,
}

impl Reaper {
    /// Takes note of records read from the rings: a flow_start makes a flow known (it may
    /// be evicted before the next scan), a kernel flow_end makes it ended.
    pub fn note_events(&mut self, events: &[Event], now: u64) {
        for ev in events {
            match EventKind::from_u8(ev.kind) {
                Some(EventKind::FlowStart | EventKind::Audit) if ev.principal != 0 => {
                    self.flows.entry(ev.key).or_insert(Seen {
                        state: flow_state_of(ev),
                        total: ev.packets,
                        active_ns: now,
                    });
                }
                Some(EventKind::FlowEnd) => {
                    self.flows.remove(&ev.key);
                }
                _ => {}
            }
        }
    }

    /// One look at the tables: flows idle past their timeout are removed and returned as
    /// flow_end records (cause idle); flows the agent knew that are gone without a
    /// revocation were evicted (cause evicted). Call with the rings drained *after* the
    /// table read (`drain_rings`), so a revocation recorded before its flow left the
    /// table is never mistaken for an eviction.
    pub fn scan(
        &mut self,
        maps: &mut FlowMaps,
        names: &mut NameMaps,
        timeouts: &FlowTimeouts,
        now: u64,
        drain_rings: impl FnOnce(&mut Self),
    ) -> Result<(Vec<Event>, ScanStats)> {
        let table = maps.all()?;
        let frags = maps.frags()?;
        drain_rings(self);
        let mut stats = ScanStats::default();
        let mut ended = Vec::new();
        let mut present: HashMap<FlowKey, ()> = HashMap::with_capacity(table.len());
        for (key, st) in table {
            present.insert(key, ());
            let total = st.packets.wrapping_add(st.reply_packets);
            let seen = self.flows.entry(key).or_insert(Seen {
                state: st,
                total,
                active_ns: now,
            });
            if seen.total != total {
                seen.total = total;
                seen.active_ns = now;
            }
            seen.state = st;
            let last = seen.active_ns.max(st.last_seen_ns);
            let timeout_ns = timeouts.for_flow(&key, &st).saturating_mul(1_000_000_000);
            if now.saturating_sub(last) < timeout_ns {
                stats.live += 1;
                continue;
            }
            // Idle: end it. A packet may race the removal; it then opens a new flow.
            if maps.remove(&key)? {
                ended.push(flow_end(&key, &st, last, FlowEndCause::Idle));
                stats.idle_ended += 1;
            }
            // A translated flow (DNS resource on a connector) leaves its NAT entries.
            if st.flags & FlowState::TRANSLATED != 0 {
                names.forget_flow(&key)?;
            }
            self.flows.remove(&key);
        }
        // Known flows the table no longer has, and no revocation ended: evicted.
        let gone: Vec<FlowKey> = self
            .flows
            .keys()
            .filter(|k| !present.contains_key(k))
            .copied()
            .collect();
        for key in gone {
            if let Some(seen) = self.flows.remove(&key) {
                if seen.state.flags & FlowState::TRANSLATED != 0 {
                    names.forget_flow(&key)?;
                }
                ended.push(flow_end(&key, &seen.state, now, FlowEndCause::Evicted));
                stats.evicted += 1;
            }
        }
        // Fragment datagrams: a datagram's fragments arrive within milliseconds; entries
        // older than the timeout are leftovers (lost fragments).
        let frag_ns = timeouts.fragments.saturating_mul(1_000_000_000);
        let mut frag_present: HashMap<FragKey, u64> = HashMap::with_capacity(frags.len());
        for (key, _) in frags {
            let first = self.frags.get(&key).copied().unwrap_or(now);
            if now.saturating_sub(first) >= frag_ns {
                let _ = maps.frags.remove(&key);
                stats.frags_expired += 1;
            } else {
                frag_present.insert(key, first);
            }
        }
        self.frags = frag_present;
        self.idle_total += stats.idle_ended;
        self.evicted_total += stats.evicted;
        Ok((ended, stats))
    }
}

fn flow_state_of(ev: &Event) -> FlowState {
    FlowState {
        packets: ev.packets,
        bytes: ev.bytes,
        reply_packets: ev.reply_packets,
        reply_bytes: ev.reply_bytes,
        first_seen_ns: ev.first_seen_ns,
        last_seen_ns: ev.ts_ns,
        rule: ev.rule,
        principal: ev.principal,
        atom: ev.atom,
        generation: ev.generation,
        ifindex: ev.ifindex,
        reason: ev.reason,
        flags: u32::from(ev.flags),
        ..FlowState::default()
    }
}

/// A flow_end record for a flow the agent ends; `at` is when it ended.
pub fn flow_end(key: &FlowKey, st: &FlowState, at: u64, cause: FlowEndCause) -> Event {
    Event {
        kind: EventKind::FlowEnd as u8,
        reason: st.reason,
        dir: gateway_common::Direction::Outbound as u8,
        detail: cause as u8,
        rule: st.rule,
        principal: st.principal,
        atom: st.atom,
        ifindex: st.ifindex,
        generation: st.generation,
        key: *key,
        packets: st.packets,
        bytes: st.bytes,
        reply_packets: st.reply_packets,
        reply_bytes: st.reply_bytes,
        first_seen_ns: st.first_seen_ns,
        ts_ns: at,
        flags: st.flags as u8,
        ..Event::default()
    }
}
