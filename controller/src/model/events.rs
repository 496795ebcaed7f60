//! The events aggregate's types: a connection event as an agent reports it, as stored,
//! and the filter of queries and followers.

/// A connection event, as the agent of a host reports it (see the agent's event log for
/// what each field means). `host` is set by the controller: the agent's own host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectionEvent {
    /// RFC 3339.
    pub timestamp: String,
    pub event: String,
    /// `allow`, `deny` or `audit`.
    pub verdict: String,
    pub reason: String,
    pub user: Option<String>,
    pub device: Option<String>,
    pub service_account: Option<String>,
    pub public_ip: Option<String>,
    pub src_ip: Option<String>,
    pub src_port: Option<u32>,
    /// Every resource covering the destination, comma-separated.
    pub resource: Option<String>,
    pub dst_ip: Option<String>,
    pub protocol: Option<String>,
    pub dst_port: Option<u32>,
    pub connector: Option<String>,
    pub remote_network: Option<String>,
    pub rule: Option<String>,
    pub rule_id: u32,
    pub host: String,
    pub packets: Option<u64>,
    pub bytes: Option<u64>,
    pub reply_packets: Option<u64>,
    pub reply_bytes: Option<u64>,
    pub duration_ms: Option<u64>,
}

/// A stored event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRecord {
    pub id: u64,
    /// The event's own time (its timestamp; the reception time when it has none).
    pub time_ms: i64,
    pub received_ms: i64,
    pub agent_id: String,
    /// `None` when the stored event does not decode.
    pub event: Option<ConnectionEvent>,
}

/// Which events a query or a follower wants (every given field must match).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub user: Option<String>,
    pub device: Option<String>,
    pub resource: Option<String>,
    pub event: Option<String>,
    pub verdict: Option<String>,
    pub host: Option<String>,
}

impl EventFilter {
    /// Whether a stored event matches (for followers; queries filter in SQL).
    pub fn matches(&self, e: &EventRecord) -> bool {
        let Some(ev) = &e.event else {
            return false;
        };
        let eq = |want: &Option<String>, have: Option<&String>| {
            want.as_ref().is_none_or(|w| have == Some(w))
        };
        self.since_ms.is_none_or(|s| e.time_ms >= s)
            && self.until_ms.is_none_or(|u| e.time_ms < u)
            && eq(&self.user, ev.user.as_ref())
            && eq(&self.device, ev.device.as_ref())
            && eq(&self.resource, ev.resource.as_ref())
            && eq(&self.event, Some(&ev.event))
            && eq(&self.verdict, Some(&ev.verdict))
            && eq(&self.host, Some(&ev.host))
    }
}
