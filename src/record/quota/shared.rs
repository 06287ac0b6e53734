//! Quota counters shared by every replica, in Redis (`serve --quota-store redis://…`).
//!
//! One reservation is one server-side Lua script: it reads every counter the call adds to,
//! and adds to all of them only if every quota still fits (all or nothing), atomically, since
//! Redis runs a script alone. There is no read-modify-write across round trips, so N replicas
//! sending concurrent calls against a cap of K reserve at most K between them.
//!
//! Key layout: `gatehouse:{<prefix>}:quota:<counter>:<subject>:<window start>` (`:` and `%`
//! escaped in the parts). The braces are a Redis Cluster hash tag: every key of one call lives
//! in one slot, which a script touching several keys needs. Each key expires its window's length
//! plus [`EXPIRY_MARGIN`] after its last reservation, so closed windows clean themselves up.
//!
//! Semantics differ from the local counters in one place: the reservation is in Redis *before*
//! the decision record is written (there is no transaction spanning both). A success commits
//! nothing more (the reservation already counts); a failure gives the reservation back with
//! an atomic decrement script. A crash between reserving and giving back keeps the reservation:
//! as with the local store, a crash never gives budget back.
//!
//! Failure: every round trip is bounded by [`TIMEOUT`]. Unreachable, timed out or a script
//! error, and the call is refused (the caller maps it to `gatehouse:quota-unavailable`); a call
//! without quotas never asks Redis. A probe pings every second so that `/readyz`, `/status` and
//! `/metrics` follow the store's state while no call asks, and the connection manager
//! reconnects by itself: nothing needs a restart when Redis returns.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::Key;

/// The longest a reservation, a give-back or a probe waits for Redis.
pub const TIMEOUT: Duration = Duration::from_millis(500);

/// How long a counter outlives its window (clock skew between replicas and Redis, slow calls).
pub const EXPIRY_MARGIN: u64 = 300;

/// How often the probe pings Redis.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Checks every quota of a call, and adds to all of them or none.
/// KEYS[i]: the counter of quota i in its window. ARGV, 4 per quota: amount, max, inclusive
/// (1 or 0), seconds to keep the key. Several quotas may share a counter: what the call asks of
/// each is added up, as the local store does. Returns 0 when reserved, else the 1-based index of
/// the first quota that does not fit (and nothing was added).
const RESERVE: &str = r"
local asked = {}
for i = 1, #KEYS do
  local k, a = KEYS[i], 4 * (i - 1)
  asked[k] = (asked[k] or 0) + tonumber(ARGV[a + 1])
  local after = (tonumber(redis.call('GET', k)) or 0) + asked[k]
  local max = tonumber(ARGV[a + 2])
  if (ARGV[a + 3] == '1' and after > max) or (ARGV[a + 3] ~= '1' and after >= max) then
    return i
  end
end
for i = 1, #KEYS do
  local a = 4 * (i - 1)
  if tonumber(ARGV[a + 1]) ~= 0 then
    redis.call('INCRBYFLOAT', KEYS[i], ARGV[a + 1])
    redis.call('EXPIRE', KEYS[i], ARGV[a + 4])
  end
end
return 0
";

/// Gives a reservation back: KEYS[i] minus ARGV[i]. A counter that has expired is not
/// recreated, and none goes below zero.
const GIVE_BACK: &str = r"
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local left = tonumber(redis.call('INCRBYFLOAT', KEYS[i], -tonumber(ARGV[i])))
    if left < 0 then
      redis.call('SET', KEYS[i], '0', 'KEEPTTL')
    end
  end
end
return 0
";

/// Where the counters are shared: what `--quota-store` and `--quota-key-prefix` say.
#[derive(Debug, Clone)]
pub struct Config {
    /// `redis://[user:password@]host[:port][/db]`, or `redis+unix:///path/redis.sock` (no TLS:
    /// `rediss://` is refused at start-up; the client is built without a TLS stack).
    pub url: String,
    /// Separates deployments (and tests) on one Redis; inside the hash tag of every key.
    pub prefix: String,
}

/// The shared counters: cheap to clone, one multiplexed connection that reconnects by itself.
#[derive(Clone)]
pub struct Shared {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    /// Replaced by the probe when Redis stops answering on it (a silent network, where no error
    /// tells the manager to reconnect).
    conn: Mutex<ConnectionManager>,
    /// `gatehouse:{<prefix>}:quota:`
    key_start: String,
    /// The URL without its password, for logs.
    store: String,
    /// The last round trip (a call's or the probe's) succeeded.
    up: AtomicBool,
    reserve: redis::Script,
    give_back: redis::Script,
}

/// Why the shared store could not decide: unreachable, timed out, or a script error.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the quota store is unavailable: {0}")]
pub struct Unavailable(pub String);

// === impl Config ===

impl Config {
    /// Checks the prefix: non-empty, and no braces (they would end the hash tag early).
    pub fn check(&self) -> Result<(), String> {
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return Err(format!("invalid --quota-key-prefix {:?}: it must be non-empty and hold no braces", self.prefix));
        }
        Ok(())
    }
}

// === impl Shared ===

impl Shared {
    /// A client for `config` and its probe. Redis need not be reachable yet: until it is, every
    /// call with a quota is refused (the URL itself must parse). Must run inside a tokio runtime.
    pub async fn connect(config: &Config) -> Result<Shared, String> {
        config.check()?;
        let client = redis::Client::open(config.url.as_str()).map_err(|e| format!("invalid --quota-store {}: {e}", redacted(&config.url)))?;
        let conn = manager(&client)?;
        let inner = Arc::new(Inner {
            client,
            conn: Mutex::new(conn),
            key_start: format!("gatehouse:{{{}}}:quota:", config.prefix),
            store: redacted(&config.url),
            // Up until a round trip fails: the first failure is then logged like any outage.
            up: AtomicBool::new(true),
            reserve: redis::Script::new(RESERVE),
            give_back: redis::Script::new(GIVE_BACK),
        });
        let shared = Shared { inner };
        if shared.ping().await {
            tracing::info!(store = %redacted(&config.url), prefix = %config.prefix, "quota counters shared in redis");
        }
        tokio::spawn(probe(Arc::downgrade(&shared.inner)));
        Ok(shared)
    }

    /// Whether the last round trip to Redis succeeded.
    pub fn available(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed)
    }

    /// The Redis key of `key`.
    fn key(&self, key: &Key) -> String {
        let mut s = String::with_capacity(self.inner.key_start.len() + key.counter.len() + key.subject.len() + 24);
        s.push_str(&self.inner.key_start);
        escape_into(&mut s, &key.counter);
        s.push(':');
        escape_into(&mut s, &key.subject);
        s.push(':');
        s.push_str(&key.window_start.to_string());
        s
    }

    /// Reserves every `(key, amount, max, inclusive, window seconds)` or none. `Ok(None)` when
    /// reserved, `Ok(Some(i))` when the i-th (0-based) does not fit.
    pub(super) async fn reserve(&self, parts: &[(&Key, f64, f64, bool, u64)]) -> Result<Option<usize>, Unavailable> {
        let mut inv = self.inner.reserve.prepare_invoke();
        for (key, amount, max, inclusive, window) in parts {
            inv.key(self.key(key)).arg(number(*amount)).arg(number(*max)).arg(if *inclusive { "1" } else { "0" }).arg(window + EXPIRY_MARGIN);
        }
        let refused: usize = self.run(&inv).await?;
        Ok(refused.checked_sub(1))
    }

    /// Gives `parts` back.
    pub(super) async fn give_back(&self, parts: &[(Key, f64)]) -> Result<(), Unavailable> {
        let mut inv = self.inner.give_back.prepare_invoke();
        for (key, amount) in parts {
            inv.key(self.key(key)).arg(number(*amount));
        }
        self.run::<i64>(&inv).await.map(|_| ())
    }

    /// One script run (EVALSHA, EVAL-loaded on NOSCRIPT), bounded by [`TIMEOUT`].
    async fn run<T: redis::FromRedisValue>(&self, inv: &redis::ScriptInvocation<'_>) -> Result<T, Unavailable> {
        let mut conn = self.inner.conn.lock().expect("redis connection lock").clone();
        let result = match tokio::time::timeout(TIMEOUT, inv.invoke_async(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Unavailable(e.to_string())),
            Err(_) => Err(Unavailable(format!("no answer within {} ms", TIMEOUT.as_millis()))),
        };
        self.inner.set_up(result.as_ref().err());
        result
    }

    /// One PING, bounded by [`TIMEOUT`]; a silent connection is replaced.
    async fn ping(&self) -> bool {
        let mut conn = self.inner.conn.lock().expect("redis connection lock").clone();
        let answer = tokio::time::timeout(TIMEOUT, redis::cmd("PING").query_async::<String>(&mut conn)).await;
        let error = match answer {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(Unavailable(e.to_string())),
            Err(_) => {
                if let Ok(fresh) = manager(&self.inner.client) {
                    *self.inner.conn.lock().expect("redis connection lock") = fresh;
                }
                Some(Unavailable(format!("no answer within {} ms", TIMEOUT.as_millis())))
            }
        };
        self.inner.set_up(error.as_ref());
        error.is_none()
    }
}

// === impl Inner ===

impl Inner {
    /// Records the outcome of a round trip; logs the changes only (not every refused call).
    fn set_up(&self, error: Option<&Unavailable>) {
        let was = self.up.swap(error.is_none(), Ordering::Relaxed);
        match error {
            Some(e) if was => {
                tracing::error!(store = %self.store, error = %e.0, "quota store unavailable: calls with quotas are refused (gatehouse:quota-unavailable)")
            }
            None if !was => tracing::info!(store = %self.store, "quota store available again"),
            _ => {}
        }
    }
}

/// Pings every [`PROBE_EVERY`] until the store is dropped.
async fn probe(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        Shared { inner }.ping().await;
    }
}

/// A connection manager that connects on first use, gives up on a connection attempt after
/// [`TIMEOUT`], and retries a lost connection quickly (two tries, 20–200 ms apart) so that a
/// call waits at most [`TIMEOUT`] and recovery follows Redis within a probe period.
fn manager(client: &redis::Client) -> Result<ConnectionManager, String> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT))
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(20))
        .set_max_delay(Duration::from_millis(200));
    ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(|e| e.to_string())
}

/// A number as Lua's `tonumber` reads it back exactly (Rust prints the shortest round trip).
fn number(n: f64) -> String {
    n.to_string()
}

/// `:` and `%` escaped, so that no two (counter, subject) pairs share a key.
fn escape_into(out: &mut String, part: &str) {
    for c in part.chars() {
        match c {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            c => out.push(c),
        }
    }
}

/// The URL without its password, for logs.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests;
