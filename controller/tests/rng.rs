//! Secrets come from the OS generator even when no file descriptor can be opened (the
//! controller's connections can exhaust them): never from a predictable fallback.
//!
//! Its own test binary: it lowers the process's file-descriptor limit for a moment.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

#[test]
fn secrets_stay_random_when_file_descriptors_run_out() {
    // SAFETY: plain getrlimit/setrlimit on this process with valid pointers.
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) }, 0);
    // The lowest free descriptor: with the soft limit there, no new one can be opened.
    let probe = std::fs::File::open("/dev/null").unwrap();
    let lowest = std::os::fd::AsRawFd::as_raw_fd(&probe) as libc::rlim_t;
    drop(probe);
    let low = libc::rlimit {
        rlim_cur: lowest,
        rlim_max: old.rlim_max,
    };
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) }, 0);
    // The condition under test is reached: /dev/urandom cannot be opened...
    let opened = std::fs::File::open("/dev/urandom");
    let values: Vec<String> = (0..200).map(|_| controller::random_hex(32)).collect();
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &old) }, 0);
    assert!(opened.is_err(), "the descriptor limit was not reached");

    // ... and still every value is 32 fresh random bytes: all distinct, and bits
    // spread evenly (a time-and-address mix repeats within a millisecond).
    let distinct: BTreeSet<&String> = values.iter().collect();
    assert_eq!(distinct.len(), values.len(), "repeated secrets");
    let ones: u32 = values
        .iter()
        .flat_map(|v| {
            (0..v.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&v[i..i + 2], 16).unwrap())
                .collect::<Vec<u8>>()
        })
        .map(u8::count_ones)
        .sum();
    let bits = (values.len() * 32 * 8) as f64;
    let share = f64::from(ones) / bits;
    assert!((0.48..0.52).contains(&share), "share of one bits {share}");
    assert!(values.iter().all(|v| v.len() == 64));
}
