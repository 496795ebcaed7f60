//! What the admin console (`crate::console`) needs of the credentials beyond Login: a
//! fresh TOTP check for sensitive actions (the one-use-per-step rule of Login applies,
//! failures count against the user's login window), ending the API session behind a
//! console session, and audit records that say an action came from the console.

use std::net::IpAddr;

use tracing::{info, warn};

use super::{MAX_LOGIN_FAILURES, session_user, unauth};
use crate::auth::{self, Principal};
use crate::state::State;
use crate::{Error, now_ms, peer_name};

impl State {
    /// Checks a TOTP code of the session user `p` entered for a sensitive console
    /// action: valid now (one step of skew), not used before (by Login or another
    /// action: the stored step decides), within the user's failure window. A failure is
    /// recorded in the audit trail (aggregated) and answered UNAUTHENTICATED.
    pub fn check_fresh_totp(
        &self,
        p: &Principal,
        code: &str,
        peer: Option<IpAddr>,
    ) -> Result<(), Error> {
        let user = session_user(p, "confirm an action with a TOTP code")?;
        let code = code.trim();
        let fail = |why: &str| {
            warn!(user, peer = %peer_name(peer), reason = why, "console TOTP confirmation failed");
            self.refused(
                "console_totp_failure",
                p.name.clone(),
                "console action".into(),
                why.into(),
            );
            unauth(format!(
                "the TOTP code was not accepted ({why}): enter the current 6-digit code of your \
                 authenticator (each code works once)"
            ))
        };
        if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(fail("not a 6-digit code"));
        }
        if let Err(ms) = self
            .creds()
            .attempts
            .begin(&user, now_ms(), MAX_LOGIN_FAILURES)
        {
            return Err(Error::ResourceExhausted(format!(
                "too many failed attempts for `{user}`: retry in {} s",
                ms / 1000 + 1
            )));
        }
        let Some(row) = self.creds().users.get(&user).cloned() else {
            return Err(unauth(format!("the user `{user}` no longer exists")));
        };
        let secret = self
            .keys
            .open_totp(&row.name, &row.totp_secret)
            .map_err(|_| fail("the TOTP secret cannot be opened"))?;
        let Some(step) = auth::totp_check(&secret, code, now_ms() / 1000) else {
            return Err(fail("wrong TOTP code"));
        };
        let mut g = self.lock();
        let mut c = self.creds();
        let Some(u) = c.users.get_mut(&user) else {
            return Err(unauth(format!("the user `{user}` no longer exists")));
        };
        if u.totp_last_step >= step || !g.store.set_totp_step(&user, step)? {
            u.totp_last_step = u.totp_last_step.max(step);
            drop(c);
            drop(g);
            return Err(fail("TOTP code already used"));
        }
        u.totp_last_step = step;
        c.attempts.clear(&user);
        Ok(())
    }

    /// Ends the API session behind a console session (logout, idle timeout or
    /// re-authentication due: `why`), recorded in the audit trail as
    /// `console_session_end`. An already ended session is not an error.
    pub fn end_console_session(&self, p: &Principal, why: &str) {
        let mut g = self.lock();
        let mut c = self.creds();
        if c.sessions.remove(&p.credential).is_none() {
            return;
        }
        let mut a = self.audit_now(&p.name, "console_session_end", "session", "open", why);
        a.revision = g.revision;
        if let Err(e) = g.store.audit(&a) {
            tracing::error!(principal = %p.name, error = %e, "recording the console session end failed");
        }
        info!(principal = %p.name, reason = why, "console session ended");
    }

    /// Records that `actor` did `action` on `target` through the admin console
    /// (`detail`: what it was). The change itself is recorded by the operation that made
    /// it, with the same actor.
    pub fn audit_console(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: &str,
    ) -> Result<(), Error> {
        let mut g = self.lock();
        let mut a = self.audit_now(actor, action, target, "", detail);
        a.revision = g.revision;
        g.store.audit(&a)
    }
}
