//! Connection admission: who may hold a connection open, so that no single source can exhaust
//! the gateway.
//!
//! Every accepted TCP connection asks for a [`Permit`] before hyper reads a byte of it. A permit
//! is refused when the client's address already holds `per_address` connections, or when the
//! gateway holds `global` connections in all. Refused connections are closed at once, counted
//! (`gatehouse_connections_refused_total` in `/metrics`) and logged at most once per
//! [`LOG_INTERVAL`], with the count of what was refused since the last line, so that a flood of
//! refusals cannot flood the log too.
//!
//! IPv6 clients are counted per /64 (one host usually holds a whole /64); IPv4 clients per
//! address. Behind a load balancer every connection comes from the balancer's address: raise
//! `--max-connections-per-address` (or set it to 0, no per-address limit) there.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::warn;

/// Refusals are logged at most this often (with the count since the last line).
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The connection limits and who holds what.
pub struct Admission {
    /// Connections one client address (or IPv6 /64) may hold; 0: no per-address limit.
    per_address: usize,
    /// Connections the gateway holds in all.
    global: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
    total: AtomicUsize,
    /// Refused because the client's address was at its limit.
    pub refused_per_address: AtomicU64,
    /// Refused because the gateway was at its global limit.
    pub refused_global: AtomicU64,
    log: Mutex<RefusalLog>,
}

/// What has been refused since the last log line.
struct RefusalLog {
    last_line: Option<Instant>,
    per_address: u64,
    global: u64,
    /// The address refused most recently (named in the line; one example, not a list).
    example: Option<IpAddr>,
}

/// One admitted connection; dropping it frees its place.
pub struct Permit {
    admission: Arc<Admission>,
    key: IpAddr,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    PerAddress,
    Global,
}

// === impl Admission ===

impl Admission {
    pub fn new(per_address: usize, global: usize) -> Admission {
        Admission {
            per_address,
            global,
            held: Mutex::new(HashMap::new()),
            total: AtomicUsize::new(0),
            refused_per_address: AtomicU64::new(0),
            refused_global: AtomicU64::new(0),
            log: Mutex::new(RefusalLog { last_line: None, per_address: 0, global: 0, example: None }),
        }
    }

    /// A permit for a connection from `peer`, or why not (the refusal is counted and maybe logged).
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Permit, Refused> {
        let key = key(peer);
        let refused = {
            let mut held = self.held.lock().expect("admission lock");
            let mine = held.get(&key).copied().unwrap_or(0);
            if self.per_address > 0 && mine >= self.per_address {
                Some(Refused::PerAddress)
            } else if self.total.load(Ordering::Relaxed) >= self.global {
                Some(Refused::Global)
            } else {
                *held.entry(key).or_insert(0) += 1;
                self.total.fetch_add(1, Ordering::Relaxed);
                None
            }
        };
        match refused {
            None => Ok(Permit { admission: self.clone(), key }),
            Some(why) => {
                self.refused(why, peer);
                Err(why)
            }
        }
    }

    /// Connections held now.
    pub fn held(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    fn release(&self, key: IpAddr) {
        let mut held = self.held.lock().expect("admission lock");
        if let Some(n) = held.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&key);
            }
        }
        self.total.fetch_sub(1, Ordering::Relaxed);
    }

    fn refused(&self, why: Refused, peer: IpAddr) {
        match why {
            Refused::PerAddress => self.refused_per_address.fetch_add(1, Ordering::Relaxed),
            Refused::Global => self.refused_global.fetch_add(1, Ordering::Relaxed),
        };
        let mut log = self.log.lock().expect("admission log lock");
        match why {
            Refused::PerAddress => log.per_address += 1,
            Refused::Global => log.global += 1,
        }
        log.example = Some(peer);
        let now = Instant::now();
        if log.last_line.is_some_and(|t| now.duration_since(t) < LOG_INTERVAL) {
            return;
        }
        let since = log.last_line.map_or(0, |t| now.duration_since(t).as_secs());
        warn!(
            refused_per_address = log.per_address,
            refused_global = log.global,
            example = ?log.example,
            since_seconds = since,
            max_per_address = self.per_address,
            max_global = self.global,
            "connections refused (at most one such line every {} s)",
            LOG_INTERVAL.as_secs()
        );
        *log = RefusalLog { last_line: Some(now), per_address: 0, global: 0, example: None };
    }
}

/// The unit a per-address limit counts: the IPv4 address, or the /64 of an IPv6 address (an
/// IPv4-mapped IPv6 address counts as its IPv4 address).
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

// === impl Permit ===

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission.release(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_address_cannot_take_the_places_of_others() {
        let a = Arc::new(Admission::new(2, 3));
        let p1 = a.admit(ip("127.0.0.2")).unwrap();
        let _p2 = a.admit(ip("127.0.0.2")).unwrap();
        assert_eq!(a.admit(ip("127.0.0.2")).err(), Some(Refused::PerAddress));
        let _p3 = a.admit(ip("127.0.0.1")).unwrap();
        assert_eq!(a.admit(ip("127.0.0.3")).err(), Some(Refused::Global), "the global limit still holds");
        drop(p1);
        assert!(a.admit(ip("127.0.0.3")).is_ok(), "a closed connection frees its place");
        assert_eq!(a.refused_per_address.load(Ordering::Relaxed), 1);
        assert_eq!(a.refused_global.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let a = Arc::new(Admission::new(1, 100));
        let _p = a.admit(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(a.admit(ip("2001:db8:1:2:ffff::9")).err(), Some(Refused::PerAddress), "same /64");
        assert!(a.admit(ip("2001:db8:1:3::1")).is_ok(), "another /64");
        let _q = a.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(a.admit(ip("::ffff:10.0.0.1")).err(), Some(Refused::PerAddress));
    }

    #[test]
    fn zero_means_no_per_address_limit() {
        let a = Arc::new(Admission::new(0, 3));
        let held: Vec<Permit> = (0..3).map(|_| a.admit(ip("10.1.1.1")).unwrap()).collect();
        assert_eq!(a.admit(ip("10.1.1.1")).err(), Some(Refused::Global));
        assert_eq!(a.held(), 3);
        drop(held);
        assert_eq!(a.held(), 0);
        assert!(a.held.lock().unwrap().is_empty(), "no entry is left behind");
    }
}
