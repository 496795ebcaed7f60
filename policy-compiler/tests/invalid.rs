//! Invalid-policy fixtures: each must fail with exactly these diagnostics (line:column,
//! severity, message) and nothing else.

#![allow(clippy::unwrap_used)]

use policy_compiler::parse;

const NOW: i64 = 1_767_225_600;

fn check(file: &str, text: &str, expected: &[&str]) {
    let diags = match parse(text, file, NOW) {
        Ok(_) => panic!("{file} must not parse"),
        Err(d) => d,
    };
    let got: Vec<String> = diags.iter().map(|d| d.short()).collect();
    assert_eq!(got, expected, "{file}");
    for d in &diags {
        assert_eq!(d.file, file);
        assert!(
            d.help.is_some(),
            "every error says what would be valid: {d}"
        );
    }
}

macro_rules! fixture {
    ($name:ident, $($e:literal),+ $(,)?) => {
        #[test]
        fn $name() {
            let file = concat!(stringify!($name), ".toml");
            check(file, include_str!(concat!("invalid/", stringify!($name), ".toml")), &[$($e),+]);
        }
    };
}

fixture!(
    ambiguous_principal,
    "30:15: error: ambiguous principal `ops`",
);

fixture!(bad_cidr, "3:27: error: `198.18.0.0/33` is not a valid CIDR",);

fixture!(
    bad_email,
    "2:9: error: `alice.example.com` is not an email address",
);

fixture!(bad_mode, "11:8: error: unknown mode `monitor`",);

fixture!(
    bad_resource_address,
    "9:11: error: `198.18.300.1` is not a valid IP address or CIDR",
);

fixture!(
    bad_timestamp,
    "24:14: error: `expires_at` is not a valid RFC 3339 timestamp: expected YYYY-MM-DDTHH:MM:SS followed by Z or an offset",
);

fixture!(
    cidr_host_bits,
    "3:10: error: CIDR `198.18.7.1/16` has host bits set",
);

fixture!(
    device_address_is_network,
    "8:11: error: `198.19.0.0/24` is a network, not a host address",
);

fixture!(
    device_address_reused,
    "13:11: error: address 198.19.0.10 of device `alice-desktop` is already used by device `alice-laptop`",
);

fixture!(
    device_as_principal,
    "22:15: error: unknown principal `alice-laptop`",
);

fixture!(
    device_unknown_owner,
    "7:9: error: unknown user `bob@example.com`",
);

fixture!(duplicate_grant, "26:8: error: duplicate grant `db-access`",);

fixture!(
    duplicate_network,
    "7:8: error: duplicate remote network `dc`",
);

fixture!(duplicate_resource, "13:8: error: duplicate resource `db`",);

fixture!(
    duplicate_sa_key,
    "5:14: error: duplicate key `runner` in service account `ci`",
);

fixture!(
    duplicate_user,
    "6:9: error: duplicate user `alice@example.com`",
);

fixture!(
    empty_cidrs,
    "3:9: error: a remote network needs at least one CIDR",
);

fixture!(
    many_errors,
    "10:14: error: port 0 is not a valid port",
    "10:19: error: port range 90-80 is reversed",
    "11:1: error: unknown key `colour` in [[resource]]",
    "14:8: error: duplicate resource `web`",
    "15:11: error: unknown remote network `lab`",
    "29:36: error: unknown principal `mallory@example.com`",
    "30:21: error: unknown resource `mail`",
    "31:14: error: `expires_at` is not a valid RFC 3339 timestamp: no such date",
);

fixture!(
    missing_key,
    "6:1: error: missing key `address` in [[resource]]",
);

fixture!(
    narrowing_empty,
    "23:14: error: narrowing of `alice-db` leaves nothing of resource `db`",
);

fixture!(
    port_not_a_number,
    "10:8: error: `ssh` is not a port or port range",
);

fixture!(
    port_out_of_range,
    "10:14: error: port 70000 is out of range",
);

fixture!(
    port_range_reversed,
    "10:8: error: port range 8100-8000 is reversed",
);

fixture!(port_zero, "10:8: error: port 0 is not a valid port",);

fixture!(
    ports_wrong_type,
    "10:7: error: `tcp` must be \"all\", \"none\" or a list of ports, found a boolean",
);

fixture!(
    resource_listed_twice,
    "23:20: error: resource `db` is listed twice",
);

fixture!(
    resource_no_traffic,
    "7:8: error: resource `db` allows no traffic: tcp, udp and icmp are all empty",
);

fixture!(
    resource_outside_network,
    "9:11: error: address `198.19.2.0/24` is outside remote network `dc`",
);

fixture!(
    resource_wrong_family,
    "9:11: error: address `2001:db8::20` is outside remote network `dc`",
);

fixture!(
    sa_key_reuses_device_address,
    "14:36: error: address 198.19.0.10 of service-account key `ci/runner-2` is already used by device `alice-laptop`",
);

fixture!(
    section_not_array,
    "1:2: error: `remote_network` must be an array of tables",
);

fixture!(
    syntax_error,
    "2:11: error: TOML syntax: invalid basic string, expected `\"`",
);

fixture!(
    test_bad_destination,
    "22:6: error: `198.18.2.20:5432` is not a destination",
    "27:6: error: IPv6 address in `2001:db8::5:443/tcp` must be in brackets",
);

fixture!(
    test_bad_expectation,
    "23:10: error: unknown expectation `drop`",
);

fixture!(
    test_unknown_source,
    "21:8: error: unknown test source `bob-laptop`",
);

fixture!(
    timestamp_without_offset,
    "24:14: error: `expires_at` is not a valid RFC 3339 timestamp: missing UTC offset",
);

fixture!(
    unknown_group_member,
    "7:33: error: unknown group member `bob@example.com`",
);

fixture!(
    unknown_key,
    "10:1: error: unknown key `port` in [[resource]]",
);

fixture!(
    unknown_key_in_sa_key,
    "3:9: error: missing key `address` in [[service_account.keys]]",
    "3:28: error: unknown key `addr` in [[service_account.keys]]",
);

fixture!(
    unknown_network,
    "8:11: error: unknown remote network `datacenter`",
);

fixture!(
    unknown_principal,
    "22:15: error: unknown principal `engineering`",
);

fixture!(unknown_resource, "23:20: error: unknown resource `wiki`",);

fixture!(unknown_section, "6:3: error: unknown section `resources`",);

fixture!(
    wrong_type,
    "2:8: error: `name` must be a string, found an integer",
);

fixture!(
    device_address_and_addresses,
    "9:13: error: [[device]] has both `address` and `addresses`",
);

fixture!(
    device_two_ipv4_addresses,
    "8:29: error: device `alice-laptop` has two IPv4 addresses, 198.19.0.10 and 198.19.0.11",
);

fixture!(device_addresses_empty, "8:13: error: `addresses` is empty",);

fixture!(
    device_mapped_address,
    "8:14: error: `::ffff:198.19.0.10` is an IPv4-mapped IPv6 address",
);

fixture!(
    sa_key_address_is_network,
    "4:53: error: `2001:db8:ff::/64` is a network, not a host address",
);

fixture!(
    sa_key_reuses_device_ipv6_address,
    "13:53: error: address 2001:db8:ff::10 of service-account key `ci/runner-1` is already used by device `alice-laptop`",
);

fixture!(
    test_from_without_family,
    "20:8: error: `alice-laptop` has no IPv6 address to reach `db` from",
);
