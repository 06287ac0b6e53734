//! Quota counters: rate limits and spend caps, reserved before the upstream call, committed on
//! success, rolled back on failure.
//!
//! Counting happens under one lock, so N concurrent calls against a cap of K reserve at most K.
//! Windows are calendar-aligned UTC (a minute starts at :00). A counter is keyed by the quota's
//! counter name, not by the snapshot, so a new commit that keeps a quota keeps its count.
//!
//! Durability: a reservation is added to the stored counters **in the same transaction as the
//! call's write-ahead decision record** ([`persist_in`], called by `AuditLog::append_decision`),
//! so once the upstream can hear of a call its cost is on disk. A failed call gives its
//! reservation back with a later (deferred) write. After `kill -9` the counters are read back
//! from the database: a call in flight at the crash, or whose give-back was not yet written,
//! counts as spent. A crash never gives budget back. Only per-window sums are stored, never a
//! call's own amount (argument values stay off disk).
//!
//! Several replicas count together in Redis instead ([`shared`], `serve --quota-store`): the
//! same windows and the same reserve / commit / roll back, one atomic script per reservation.
//! Then a call with quotas is refused when Redis cannot answer ([`Refused::Unavailable`]).
//! `gatehouse test` and `eval` always count locally ([`Quotas::reserve_local`]).

pub mod shared;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::policy::{Increment, Quota, Scope};
use crate::record::store::Store;
use crate::record::store::sql::{self, Conn, params};

/// One counter in one window for one subject.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    counter: String,
    subject: String,
    window_start: i64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Count {
    committed: f64,
    reserved: f64,
}

/// All counters.
pub struct Quotas {
    /// The local counters (empty when they are shared).
    counts: Mutex<HashMap<Key, Count>>,
    store: Option<Store>,
    /// Counters shared by every replica in Redis; when set, they are the only ones counted.
    shared: Option<shared::Shared>,
}

/// What one call reserved; hand it back to [`Quotas::commit`] or [`Quotas::rollback`].
#[derive(Debug, Default)]
pub struct Reservation {
    parts: Vec<(Key, f64)>,
    /// Whether the reservation was written to the database with the decision record (then a
    /// rollback must take it back there too).
    durable: bool,
    /// Whether it was made in the shared store (then a rollback gives it back there).
    shared: bool,
}

/// One stored counter change: (counter, subject, window start, amount).
pub type Row = (String, String, i64, f64);

/// The quota that refused a call.
#[derive(Debug)]
pub struct Exceeded {
    pub quota: Arc<Quota>,
    pub why: String,
}

/// Why a call's quotas refused it.
#[derive(Debug)]
pub enum Refused {
    /// A quota would be exceeded.
    Exceeded(Exceeded),
    /// The shared store could not be asked: the call is refused (fail closed).
    Unavailable(shared::Unavailable),
}

/// Who a call is counted as.
pub struct Subject<'a> {
    pub identity: &'a str,
    pub server: &'a str,
}

// === impl Key ===

impl Key {
    /// The counter `q` adds to for `who` in the window open at `now`.
    fn of(q: &Quota, who: &Subject, now: i64) -> Key {
        let subject = match q.per {
            Scope::Identity => who.identity,
            Scope::Server => who.server,
            Scope::Global => "*",
        };
        let secs = q.window.seconds() as i64;
        Key { counter: q.counter.clone(), subject: subject.to_string(), window_start: now - now.rem_euclid(secs) }
    }
}

// === impl Quotas ===

impl Quotas {
    /// Counters persisted in `store` (loaded for windows still open at `now`), or in memory only.
    pub fn load(store: Option<Store>, now: i64) -> Quotas {
        let mut counts = HashMap::new();
        if let Some(s) = &store
            && let Ok(reader) = s.read() {
                // The longest window is a day: older rows can never matter again.
                let rows = reader.conn().query(
                    "SELECT counter, subject, window_start, value FROM quota_counters WHERE window_start > ?1",
                    params![now - 86_400],
                    |r| Ok((Key { counter: r.string(0)?, subject: r.string(1)?, window_start: r.i64(2)? }, r.f64(3)?)),
                );
                for (k, v) in rows.into_iter().flatten() {
                    counts.insert(k, Count { committed: v, reserved: 0.0 });
                }
            }
        Quotas { counts: Mutex::new(counts), store, shared: None }
    }

    /// Counters shared in Redis (nothing kept locally).
    pub fn shared(shared: shared::Shared) -> Quotas {
        Quotas { counts: Mutex::new(HashMap::new()), store: None, shared: Some(shared) }
    }

    /// `None` for local counters, else whether the shared store answered last time.
    pub fn store_available(&self) -> Option<bool> {
        self.shared.as_ref().map(shared::Shared::available)
    }

    /// Reserves what the call would add to each quota, in the shared store when there is one,
    /// else locally ([`Quotas::reserve_local`]). A call without quotas never asks the store.
    pub async fn reserve(&self, quotas: &[Arc<Quota>], who: &Subject<'_>, args: &Value, now: i64) -> Result<Reservation, Refused> {
        match &self.shared {
            None => self.reserve_local(quotas, who, args, now).map_err(Refused::Exceeded),
            Some(_) if quotas.is_empty() => Ok(Reservation::default()),
            // Boxed: the local path's future (the handler's) stays as small as it was.
            Some(s) => Box::pin(reserve_shared(s, quotas, who, args, now)).await,
        }
    }

    /// Sets what `q`'s counter already holds for `who` in the window open at `now` (for
    /// `gatehouse test` and `eval`, which decide calls against given counts).
    pub fn preset(&self, q: &Quota, who: &Subject, now: i64, count: f64) {
        let mut counts = self.counts.lock().expect("quota lock");
        counts.insert(Key::of(q, who, now), Count { committed: count, reserved: 0.0 });
    }

    /// Reserves what the call would add to each quota in the local counters, or refuses with
    /// the first quota it would exceed (then nothing is reserved). `now` is unix seconds.
    pub fn reserve_local(&self, quotas: &[Arc<Quota>], who: &Subject, args: &Value, now: i64) -> Result<Reservation, Exceeded> {
        let wanted = wanted(quotas, who, args, now)?;
        let mut counts = self.counts.lock().expect("quota lock");
        // Several quotas of one call may share a counter: add up what this call asks of each.
        let mut asked: HashMap<&Key, f64> = HashMap::new();
        for (key, inc, q) in &wanted {
            let total = asked.entry(key).or_default();
            *total += inc;
            let c = counts.get(key).copied().unwrap_or_default();
            let after = c.committed + c.reserved + *total;
            let ok = if q.inclusive { after <= q.max } else { after < q.max };
            if !ok {
                return Err(Exceeded::by(q));
            }
        }
        let mut r = Reservation::default();
        for (key, inc, _) in wanted {
            counts.entry(key.clone()).or_default().reserved += inc;
            r.parts.push((key, inc));
        }
        Ok(r)
    }

    /// The call reached the upstream and succeeded: the reservation counts. (On disk it already
    /// does: it was written with the decision record; in the shared store it already counts.)
    pub fn commit(&self, r: Reservation) {
        if r.shared || r.parts.is_empty() {
            return;
        }
        let mut counts = self.counts.lock().expect("quota lock");
        for (key, inc) in &r.parts {
            let c = counts.entry(key.clone()).or_default();
            c.reserved -= inc;
            c.committed += inc;
        }
    }

    /// The call failed or was refused after reserving: nothing counts. A reservation already
    /// written with its decision record is taken back on disk by a deferred write (lost in a
    /// crash, which errs on the side of spent). A shared reservation is given back in Redis
    /// (if Redis cannot be reached, it counts as spent).
    pub async fn rollback(&self, r: Reservation) {
        if r.parts.is_empty() {
            return;
        }
        if let (true, Some(s)) = (r.shared, &self.shared) {
            if let Err(e) = Box::pin(s.give_back(&r.parts)).await {
                tracing::error!(error = %e, "a failed call's quota reservation was not given back (it counts as spent)");
            }
            return;
        }
        {
            let mut counts = self.counts.lock().expect("quota lock");
            for (key, inc) in &r.parts {
                if let Some(c) = counts.get_mut(key) {
                    c.reserved -= inc;
                }
            }
        }
        if let (Some(store), true, false) = (&self.store, r.durable, r.parts.is_empty()) {
            let rows: Vec<Row> = r.rows().into_iter().map(|(c, s, w, v)| (c, s, w, -v)).collect();
            store.write_deferred_then(
                move |c| persist_in(c, &rows),
                |r| {
                    if let Err(e) = r {
                        tracing::error!(error = %e, "a failed call's quota reservation was not given back (it counts as spent)");
                    }
                },
            );
        }
    }

    /// Whether reservations must be written with the decision record (local counters persist).
    pub fn persistent(&self) -> bool {
        self.store.is_some() && self.shared.is_none()
    }

    /// Drops counters of windows that have closed (bounded memory).
    pub fn sweep(&self, now: i64) {
        self.counts.lock().expect("quota lock").retain(|k, c| k.window_start > now - 86_400 || c.reserved > 0.0);
    }
}

/// What one quota asks of a call: its counter, the amount, the quota.
type Wanted<'q> = (Key, f64, &'q Arc<Quota>);

/// What each quota asks of the call; a spend cap whose argument is missing or not a
/// non-negative number refuses.
fn wanted<'q>(quotas: &'q [Arc<Quota>], who: &Subject, args: &Value, now: i64) -> Result<Vec<Wanted<'q>>, Exceeded> {
    let mut wanted = Vec::with_capacity(quotas.len());
    for q in quotas {
        let inc = match &q.increment {
            Increment::One => 1.0,
            Increment::Const(n) => *n,
            Increment::Nothing => 0.0,
            Increment::Arg(path) => match path.resolve(args).and_then(Value::as_f64) {
                Some(n) if n >= 0.0 => n,
                _ => return Err(Exceeded { quota: q.clone(), why: format!("{path} must be a non-negative number for quota {:?}", q.name) }),
            },
        };
        wanted.push((Key::of(q, who, now), inc, q));
    }
    Ok(wanted)
}

/// [`Quotas::reserve`] in the shared store: one script checks and adds every quota.
async fn reserve_shared(s: &shared::Shared, quotas: &[Arc<Quota>], who: &Subject<'_>, args: &Value, now: i64) -> Result<Reservation, Refused> {
    let wanted = wanted(quotas, who, args, now).map_err(Refused::Exceeded)?;
    let parts: Vec<_> = wanted.iter().map(|(key, inc, q)| (key, *inc, q.max, q.inclusive, q.window.seconds())).collect();
    match s.reserve(&parts).await {
        Err(e) => Err(Refused::Unavailable(e)),
        Ok(Some(i)) => match wanted.get(i) {
            Some((_, _, q)) => Err(Refused::Exceeded(Exceeded::by(q))),
            None => Err(Refused::Unavailable(shared::Unavailable(format!("the reservation script named quota {} of {}", i + 1, wanted.len())))),
        },
        Ok(None) => Ok(Reservation { parts: wanted.into_iter().map(|(key, inc, _)| (key, inc)).collect(), durable: false, shared: true }),
    }
}

// === impl Exceeded ===

impl Exceeded {
    /// `q` refused the call: its `on_deny`, else its description.
    fn by(q: &Arc<Quota>) -> Exceeded {
        let why = match &q.on_deny {
            Some(m) => m.to_string(),
            None => format!("quota {:?} exceeded ({})", q.name, q.describe()),
        };
        Exceeded { quota: q.clone(), why }
    }
}

// === impl Reservation ===

impl Reservation {
    /// The counter changes to store with the call's decision record.
    pub fn rows(&self) -> Vec<Row> {
        self.parts.iter().map(|(k, v)| (k.counter.clone(), k.subject.clone(), k.window_start, *v)).collect()
    }

    /// The rows were committed with the decision record.
    pub fn made_durable(&mut self) {
        self.durable = true;
    }
}

/// Adds each row's amount to its stored counter (a negative amount takes it back), in the
/// caller's transaction.
/// Runs on SQLite and PostgreSQL alike: the new row's value is clamped in Rust, the updated one
/// by a CASE (SQLite has no `greatest`, PostgreSQL's `max` is an aggregate).
pub fn persist_in(c: &Conn, rows: &[Row]) -> sql::Result<()> {
    for (counter, subject, window, v) in rows {
        c.exec(
            "INSERT INTO quota_counters (counter, subject, window_start, value) VALUES (?1, ?2, ?3, ?5)
             ON CONFLICT (counter, subject, window_start) DO UPDATE
             SET value = CASE WHEN quota_counters.value + ?4 > 0 THEN quota_counters.value + ?4 ELSE 0 END",
            params![counter, subject, *window, *v, v.max(0.0)],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
