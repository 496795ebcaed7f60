//! Small bounded structures for what unauthenticated or misbehaving callers can make the
//! controller remember: token buckets (globally, per peer address, per agent), the
//! per-user failed-login windows, and the aggregation of repeated refusals in the audit
//! trail. Each has a fixed capacity; none grows with what a caller sends.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// A token bucket: `burst` tokens, refilled at `per_sec`.
#[derive(Clone, Copy, Debug)]
pub struct Bucket {
    tokens: f64,
    last_ms: i64,
}

/// The rate of a bucket.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub burst: f64,
    pub per_sec: f64,
}

impl Bucket {
    pub fn full(rate: Rate, now_ms: i64) -> Bucket {
        Bucket {
            tokens: rate.burst,
            last_ms: now_ms,
        }
    }

    fn refill(&mut self, rate: Rate, now_ms: i64) {
        let dt = (now_ms - self.last_ms).max(0) as f64 / 1000.0;
        self.tokens = (self.tokens + dt * rate.per_sec).min(rate.burst);
        self.last_ms = now_ms;
    }

    /// Takes `n` tokens if there are that many.
    pub fn take(&mut self, rate: Rate, now_ms: i64, n: f64) -> bool {
        self.refill(rate, now_ms);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Whether the bucket has refilled completely (nothing to remember).
    fn is_full(&self, rate: Rate, now_ms: i64) -> bool {
        let mut b = *self;
        b.refill(rate, now_ms);
        b.tokens >= rate.burst
    }
}

/// Token buckets per key, at most `cap` of them: full buckets are forgotten first, then
/// the least recently used.
#[derive(Debug)]
pub struct Buckets<K> {
    map: HashMap<K, Bucket>,
    cap: usize,
}

impl<K: Eq + Hash + Clone> Buckets<K> {
    pub fn new(cap: usize) -> Self {
        Buckets {
            map: HashMap::new(),
            cap: cap.max(1),
        }
    }

    pub fn take(&mut self, key: &K, rate: Rate, now_ms: i64, n: f64) -> bool {
        if !self.map.contains_key(key) && self.map.len() >= self.cap {
            self.map.retain(|_, b| !b.is_full(rate, now_ms));
            if self.map.len() >= self.cap
                && let Some(oldest) = self
                    .map
                    .iter()
                    .min_by_key(|(_, b)| b.last_ms)
                    .map(|(k, _)| k.clone())
            {
                self.map.remove(&oldest);
            }
        }
        self.map
            .entry(key.clone())
            .or_insert_with(|| Bucket::full(rate, now_ms))
            .take(rate, now_ms, n)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Failed (and in-flight) login attempts per user name within a window, for at most
/// `cap` names (unknown names included, so that a known name does not stand out by
/// being the only one that gets locked). When full, windows that have ended are
/// forgotten first, then the name whose last attempt is oldest.
#[derive(Debug)]
pub struct Attempts {
    map: HashMap<String, VecDeque<i64>>,
    cap: usize,
    window_ms: i64,
}

impl Attempts {
    pub fn new(cap: usize, window_ms: i64) -> Self {
        Attempts {
            map: HashMap::new(),
            cap: cap.max(1),
            window_ms,
        }
    }

    fn prune(&mut self, user: &str, now_ms: i64) -> usize {
        let Some(q) = self.map.get_mut(user) else {
            return 0;
        };
        while q.front().is_some_and(|&t| t <= now_ms - self.window_ms) {
            q.pop_front();
        }
        let n = q.len();
        if n == 0 {
            self.map.remove(user);
        }
        n
    }

    /// Counts an attempt for `user` unless `max` are already counted in the window;
    /// `Err(ms)`: refused, retry in `ms`.
    pub fn begin(&mut self, user: &str, now_ms: i64, max: usize) -> Result<(), i64> {
        let n = self.prune(user, now_ms);
        if n >= max {
            let first = self
                .map
                .get(user)
                .and_then(|q| q.front().copied())
                .unwrap_or(now_ms);
            return Err((first + self.window_ms - now_ms).max(0));
        }
        if n == 0 && self.map.len() >= self.cap {
            let w = self.window_ms;
            self.map
                .retain(|_, q| q.back().is_some_and(|&t| t > now_ms - w));
            if self.map.len() >= self.cap
                && let Some(oldest) = self
                    .map
                    .iter()
                    .min_by_key(|(_, q)| q.back().copied().unwrap_or(i64::MIN))
                    .map(|(k, _)| k.clone())
            {
                self.map.remove(&oldest);
            }
        }
        self.map
            .entry(user.to_string())
            .or_default()
            .push_back(now_ms);
        Ok(())
    }

    /// Forgets `user`'s attempts (after a successful login).
    pub fn clear(&mut self, user: &str) {
        self.map.remove(user);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// A refusal to record in the audit trail.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Refusal {
    pub action: String,
    pub actor: String,
    pub target: String,
    pub detail: String,
}

#[derive(Debug)]
struct Agg {
    first_ms: i64,
    last_ms: i64,
    /// Refusals after the one recorded at once.
    repeats: u64,
}

/// Aggregates repeated refusals: the first of a kind (same action, actor, target and
/// detail) within a window is recorded at once; repeats are counted and recorded as one
/// record when the window ends. At most `cap` kinds are followed, and at most
/// `immediate` first records per action and window are written at once; beyond either,
/// refusals are only counted per action ("N more, not itemized"). So what callers can
/// make the audit trail grow by is bounded per window, whatever they send (actions are
/// the controller's own words, a fixed set).
#[derive(Debug)]
pub struct Refusals {
    open: HashMap<Refusal, Agg>,
    overflow: HashMap<String, Agg>,
    cap: usize,
    window_ms: i64,
    budgets: HashMap<String, Bucket>,
    budget_rate: Rate,
}

/// What to write to the audit trail: (time, action, actor, target, detail).
pub type Record = (i64, Refusal);

impl Refusals {
    pub fn new(cap: usize, window_ms: i64, immediate_per_window: f64) -> Self {
        let rate = Rate {
            burst: immediate_per_window,
            per_sec: immediate_per_window / (window_ms as f64 / 1000.0),
        };
        Refusals {
            open: HashMap::new(),
            overflow: HashMap::new(),
            cap: cap.max(1),
            window_ms,
            budgets: HashMap::new(),
            budget_rate: rate,
        }
    }

    /// Notes a refusal; returns the record to write now, if any.
    pub fn note(&mut self, r: Refusal, now_ms: i64) -> Option<Record> {
        if let Some(a) = self.open.get_mut(&r) {
            a.repeats += 1;
            a.last_ms = now_ms;
            return None;
        }
        let rate = self.budget_rate;
        let budget = self
            .budgets
            .entry(r.action.clone())
            .or_insert_with(|| Bucket::full(rate, now_ms));
        if self.open.len() < self.cap && budget.take(rate, now_ms, 1.0) {
            self.open.insert(
                r.clone(),
                Agg {
                    first_ms: now_ms,
                    last_ms: now_ms,
                    repeats: 0,
                },
            );
            return Some((now_ms, r));
        }
        let a = self.overflow.entry(r.action).or_insert(Agg {
            first_ms: now_ms,
            last_ms: now_ms,
            repeats: 0,
        });
        a.repeats += 1;
        a.last_ms = now_ms;
        None
    }

    /// The aggregate records of windows that have ended (all of them with `force`).
    pub fn due(&mut self, now_ms: i64, force: bool) -> Vec<Record> {
        let w = self.window_ms;
        let ended = |a: &Agg| force || a.first_ms + w <= now_ms;
        let fmt = |ms: i64| policy_compiler::format_rfc3339(ms.div_euclid(1000));
        let mut out = Vec::new();
        let keys: Vec<Refusal> = self
            .open
            .iter()
            .filter(|(_, a)| ended(a))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            if let Some(a) = self.open.remove(&k)
                && a.repeats > 0
            {
                let detail = format!(
                    "{} (repeated {} more times until {})",
                    k.detail,
                    a.repeats,
                    fmt(a.last_ms)
                );
                out.push((now_ms, Refusal { detail, ..k }));
            }
        }
        let actions: Vec<String> = self
            .overflow
            .iter()
            .filter(|(_, a)| ended(a))
            .map(|(k, _)| k.clone())
            .collect();
        for action in actions {
            if let Some(a) = self.overflow.remove(&action) {
                out.push((
                    now_ms,
                    Refusal {
                        action,
                        actor: "various".into(),
                        target: String::new(),
                        detail: format!(
                            "{} refusals not itemized (too many kinds) from {} to {}",
                            a.repeats,
                            fmt(a.first_ms),
                            fmt(a.last_ms)
                        ),
                    },
                ));
            }
        }
        out.sort_by(|a, b| (&a.1.action, &a.1.actor).cmp(&(&b.1.action, &b.1.actor)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: Rate = Rate {
        burst: 3.0,
        per_sec: 1.0,
    };

    #[test]
    fn buckets_are_bounded_and_refill() {
        let mut b: Buckets<u32> = Buckets::new(2);
        assert!((0..3).all(|_| b.take(&1, R, 0, 1.0)));
        assert!(!b.take(&1, R, 0, 1.0));
        assert!(b.take(&1, R, 1000, 1.0), "one token a second");
        for k in 2..100 {
            b.take(&k, R, 1000, 1.0);
        }
        assert!(b.len() <= 2);
    }

    #[test]
    fn attempts_count_before_and_stay_bounded() {
        let mut a = Attempts::new(10, 60_000);
        for _ in 0..5 {
            a.begin("bob", 0, 5).unwrap();
        }
        assert_eq!(a.begin("bob", 1, 5), Err(59_999));
        assert!(a.begin("bob", 60_001, 5).is_ok(), "the window passed");
        a.clear("bob");
        for i in 0..10_000 {
            let _ = a.begin(&format!("u{i}"), 100, 5);
        }
        assert!(a.len() <= 10);
    }

    #[test]
    fn refusals_are_aggregated_and_bounded() {
        let mut r = Refusals::new(4, 60_000, 3.0);
        let k = |actor: &str| Refusal {
            action: "login_failure".into(),
            actor: actor.into(),
            target: "session".into(),
            detail: "wrong password".into(),
        };
        assert!(r.note(k("a"), 0).is_some());
        for t in 1..50 {
            assert!(r.note(k("a"), t).is_none());
        }
        assert!(r.due(59_999, false).is_empty());
        let d = r.due(60_000, false);
        assert_eq!(d.len(), 1);
        assert!(d[0].1.detail.contains("repeated 49 more times"), "{d:?}");
        // Many distinct kinds: a few first records, the rest counted per action.
        let written = (0..1000)
            .filter(|i| r.note(k(&format!("x{i}")), 70_000).is_some())
            .count();
        assert!(written <= 3, "{written}");
        let d = r.due(200_000, false);
        assert!(d.len() <= 4, "{d:?}");
        assert!(d.iter().any(|x| x.1.detail.contains("not itemized")));
    }
}
