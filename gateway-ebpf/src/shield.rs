//! The shield: what the physical links of a host with the tunnel on let through
//! (docs/dataplane.md, "Shield"). Protected traffic crosses a physical link only inside the
//! tunnel, so a packet in the clear whose source or destination is in protected space is
//! dropped whatever it claims to be; WireGuard handshake initiations arriving on the link
//! are limited per source prefix; everything else passes untouched. The policy itself is
//! enforced on the tunnel interface.

use gateway_common::{EventKind, Reason, flow::proto, maps::HandshakeBucket};

use crate::{
    Cx, Scratch,
    decide::{Decision, is_protected},
    events::source_prefix,
    maps::HANDSHAKES,
    now_ns,
    parse::{self, Frame},
    report,
};

const SECOND_NS: u64 = 1_000_000_000;

/// Decides one parsed packet at a shield hook (`ingress`: XDP ingress; otherwise tcx
/// egress).
#[inline(always)]
pub fn shield<C: Frame>(ctx: &C, cx: &Cx, scratch: &Scratch, ingress: bool) -> Reason {
    let p = &scratch.parsed;
    // Later fragments included: they carry their addresses too.
    if is_protected(cx.slot, &p.key.dst) || is_protected(cx.slot, &p.key.src) {
        let d = Decision::simple(Reason::DeniedUntunneled);
        report(cx, scratch, EventKind::Deny, &d);
        return Reason::DeniedUntunneled;
    }
    if ingress
        && cx.cfg.tunnel != 0
        && cx.cfg.wg_port != [0, 0]
        && p.key.proto == proto::UDP
        && !p.later_fragment
        && p.key.dst_port == cx.cfg.wg_port
        && parse::is_handshake_initiation(ctx, p)
        && !take_handshake(cx, scratch)
    {
        let d = Decision::simple(Reason::HandshakeRateLimited);
        report(cx, scratch, EventKind::Deny, &d);
        return Reason::HandshakeRateLimited;
    }
    Reason::Unprotected
}

/// Takes one initiation from the source prefix's token bucket; false when it is empty.
/// The bucket holds time-valued credit: an initiation costs `1e9 / rate` ns, the bucket at
/// most `burst` of them, and it refills with the time elapsed. A new prefix starts full.
/// CPUs update a bucket without locks: a race may let an extra initiation through, never
/// drop one that had credit for long.
#[inline(always)]
fn take_handshake(cx: &Cx, scratch: &Scratch) -> bool {
    let rate = cx.cfg.handshakes_per_source as u64;
    let burst = cx.cfg.handshake_burst as u64;
    if rate == 0 || burst == 0 {
        return true;
    }
    let cost = SECOND_NS / rate;
    let cap = cost.saturating_mul(burst);
    let now = now_ns();
    let prefix = source_prefix(&scratch.parsed.key);
    let Some(b) = HANDSHAKES.get_ptr_mut(&prefix) else {
        let fresh = HandshakeBucket {
            credit_ns: cap.saturating_sub(cost),
            last_ns: now,
        };
        // A full table evicts its least recently used prefix (which then starts full
        // again): the limit is per source, not a global budget.
        let _ = HANDSHAKES.insert(&prefix, &fresh, 0);
        return true;
    };
    // SAFETY: pointer from a successful lookup, valid for this run (RCU).
    let b = unsafe { &mut *b };
    let mut credit = b.credit_ns;
    if now > b.last_ns {
        credit = credit.saturating_add(now - b.last_ns);
        b.last_ns = now;
    }
    if credit > cap {
        credit = cap;
    }
    if credit >= cost {
        b.credit_ns = credit - cost;
        true
    } else {
        b.credit_ns = credit;
        false
    }
}
