//! JSON Schema (draft 2020-12) of the policy file format, for editors and tooling.

use serde_json::{Value, json};

/// The JSON Schema of the policy format (TOML documents map onto JSON one to one;
/// datetimes may also be written as RFC 3339 strings).
pub fn json_schema() -> Value {
    let name = json!({ "type": "string", "minLength": 1 });
    let address = json!({
        "type": "string",
        "description": "IPv4/IPv6 host address or CIDR, e.g. \"198.18.0.10\", \"198.18.0.0/24\", \"2001:db8::/48\""
    });
    let resource_address = json!({
        "type": "string",
        "description": "IPv4/IPv6 host address or CIDR (\"198.18.0.10\", \"198.18.0.0/24\", \"2001:db8::/48\"), a DNS name (\"db.prod.internal\") or a wildcard (\"*.corp.example.com\": one more label, \"**.corp.example.com\": one or more)"
    });
    let host = json!({
        "type": "string",
        "description": "IPv4 or IPv6 host address, e.g. \"198.19.0.10\" or \"2001:db8:ff::10\""
    });
    let hosts = json!({
        "type": "array", "minItems": 1, "maxItems": 2, "uniqueItems": true, "items": host,
        "description": "one or two host addresses, at most one IPv4 and one IPv6 (never IPv4-mapped), e.g. [\"198.19.0.10\", \"2001:db8:ff::10\"]"
    });
    // A principal has `address` or `addresses`, not both.
    let one_of_address = json!([{ "required": ["address"] }, { "required": ["addresses"] }]);
    let ports = json!({
        "description": "\"all\", \"none\", or a list of ports (1-65535) and ranges (\"8000-8100\")",
        "oneOf": [
            { "enum": ["all", "none"] },
            { "type": "string", "pattern": "^[0-9]{1,5}(-[0-9]{1,5})?$" },
            { "type": "integer", "minimum": 1, "maximum": 65535 },
            { "type": "array", "items": { "oneOf": [
                { "type": "integer", "minimum": 1, "maximum": 65535 },
                { "type": "string", "pattern": "^[0-9]{1,5}(-[0-9]{1,5})?$" }
            ] } }
        ]
    });
    let timestamp = json!({ "type": "string", "format": "date-time", "description": "RFC 3339, with Z or an offset" });
    let strings = json!({ "type": "array", "items": { "type": "string" } });
    let public_key = json!({
        "type": "string", "pattern": "^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$",
        "description": "WireGuard public key: 32 bytes in standard base64 (44 characters), as `wg pubkey` prints it; used once in the policy"
    });
    let grant = json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["name", "principals", "resources"],
        "properties": {
            "name": name,
            "principals": { "type": "array", "minItems": 1, "items": { "type": "string" },
                "description": "group names, user emails, service-account names; optionally prefixed group:, user:, service_account:" },
            "resources": { "type": "array", "minItems": 1, "items": { "type": "string" } },
            "tcp": ports, "udp": ports, "icmp": { "type": "boolean" },
            "expires_at": timestamp
        },
        "description": "When any of tcp/udp/icmp is given, the grant covers exactly those (intersected with each resource's)."
    });
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Access gateway policy",
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "remote_network": { "type": "array", "items": {
                "type": "object", "additionalProperties": false, "required": ["name", "cidrs"],
                "properties": {
                    "name": name,
                    "cidrs": { "type": "array", "minItems": 1, "items": address },
                    "connectors": strings
                } } },
            "resource": { "type": "array", "items": {
                "type": "object", "additionalProperties": false, "required": ["name", "network", "address"],
                "properties": {
                    "name": name, "network": { "type": "string" }, "address": resource_address,
                    "tcp": ports, "udp": ports, "icmp": { "type": "boolean" },
                    "mode": { "enum": ["enforce", "audit"], "default": "enforce" }
                } } },
            "user": { "type": "array", "items": {
                "type": "object", "additionalProperties": false, "required": ["email"],
                "properties": { "email": { "type": "string", "format": "email" } } } },
            "device": { "type": "array", "items": {
                "type": "object", "additionalProperties": false, "required": ["name", "owner"],
                "oneOf": one_of_address,
                "properties": { "name": name, "owner": { "type": "string" }, "address": host, "addresses": hosts, "public_key": public_key } } },
            "service_account": { "type": "array", "items": {
                "type": "object", "additionalProperties": false, "required": ["name"],
                "properties": {
                    "name": name,
                    "keys": { "type": "array", "items": {
                        "type": "object", "additionalProperties": false, "required": ["name"],
                        "oneOf": one_of_address,
                        "properties": { "name": name, "address": host, "addresses": hosts, "expires_at": timestamp, "public_key": public_key } } }
                } } },
            "group": { "type": "array", "items": {
                "type": "object", "additionalProperties": false, "required": ["name"],
                "properties": { "name": name, "members": strings } } },
            "connector": { "type": "array", "items": {
                "type": "object", "additionalProperties": false, "required": ["name", "public_key", "endpoint"],
                "properties": {
                    "name": { "type": "string", "description": "a connector some remote_network lists" },
                    "public_key": public_key,
                    "endpoint": { "type": "string", "description": "host:port; an IPv4 address, [IPv6] address or DNS name, port 1-65535, e.g. \"203.0.113.7:51820\"" }
                } } },
            "allow": { "type": "array", "items": grant },
            "deny": { "type": "array", "items": grant },
            "test": { "type": "array", "items": {
                "type": "object", "additionalProperties": false, "required": ["from", "to", "expect"],
                "properties": {
                    "name": { "type": "string" },
                    "from": { "type": "string", "description": "device name or sa-name/key-name (its address of the destination's family), or an address" },
                    "to": { "type": "string", "description": "addr:port/tcp, [v6]:port/udp, addr/icmp, or a resource name" },
                    "expect": { "enum": ["allow", "deny", "audit"] },
                    "at": timestamp
                } } }
        }
    })
}
