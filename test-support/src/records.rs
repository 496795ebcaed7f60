//! What a connection record must carry, as the README documents it: the expectation the
//! demo and the agent tests check the agent's logs against (written from the docs, not
//! taken from the agent's code).

/// The fields every connection record carries (null when unknown), and per event.
pub const BASE_FIELDS: [&str; 20] = [
    "timestamp",
    "event",
    "verdict",
    "reason",
    "user",
    "device",
    "service_account",
    "public_ip",
    "public_port",
    "src_ip",
    "src_port",
    "resource",
    "dst_ip",
    "protocol",
    "dst_port",
    "connector",
    "remote_network",
    "rule",
    "rule_id",
    "host",
];
pub const FLOW_END_FIELDS: [&str; 5] = [
    "packets",
    "bytes",
    "reply_packets",
    "reply_bytes",
    "duration_ms",
];
