//! Servers some tests need beside gatehouse (PostgreSQL today): found on their standard
//! loopback port, or the test is skipped with one printed line — unless GATEHOUSE_REQUIRE_SERVICES
//! is set (CI), and then it fails. Each test gets a fresh database of its own, dropped after.
//!
//! A new service is one more function of the same shape: probe, `unavailable(name, why)`, a
//! guard that cleans up on drop.

use std::time::Duration;

/// The PostgreSQL server tests connect to (trust auth on loopback); `GATEHOUSE_TEST_POSTGRES`
/// overrides it. Its database must exist; tests create their own beside it.
const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A fresh PostgreSQL database, dropped (with its connections) when this is dropped.
pub struct Postgres {
    /// `postgres://…/gh_test_<random>`: what `--database` takes.
    pub url: String,
    admin: String,
    name: String,
}

/// None (after printing why) when the service cannot be used and it is not required.
fn unavailable<T>(service: &str, why: String) -> Option<T> {
    if std::env::var_os("GATEHOUSE_REQUIRE_SERVICES").is_some() {
        panic!("{service} is not available and GATEHOUSE_REQUIRE_SERVICES is set: {why}");
    }
    println!("skipped: {service} is not available ({why})");
    None
}

/// Runs blocking client code off the async runtime (the sync postgres client refuses to run
/// inside one).
fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f).join().expect("the service client thread")
}

/// A fresh database on the test PostgreSQL server, or None (skipped).
pub fn postgres() -> Option<Postgres> {
    let admin = std::env::var("GATEHOUSE_TEST_POSTGRES").unwrap_or_else(|_| POSTGRES.to_string());
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).unwrap();
    let name = format!("gh_test_{}", hex::encode(b));
    let (a, n) = (admin.clone(), name.clone());
    let created = off_runtime(move || -> Result<(), String> {
        let mut config: postgres::Config = a.parse().map_err(|e| format!("{e}"))?;
        config.connect_timeout(Duration::from_secs(3));
        let mut c = config.connect(postgres::NoTls).map_err(|e| format!("{a}: {e}"))?;
        c.batch_execute(&format!("CREATE DATABASE {n}")).map_err(|e| format!("creating {n}: {e}"))
    });
    if let Err(why) = created {
        return unavailable("PostgreSQL", why);
    }
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    Some(Postgres { url: format!("{base}/{name}"), admin, name })
}

impl Postgres {
    /// Runs `f` with a client on the test database, off the async runtime.
    pub fn with<T: Send + 'static>(&self, f: impl FnOnce(&mut postgres::Client) -> T + Send + 'static) -> T {
        let url = self.url.clone();
        off_runtime(move || f(&mut postgres::Client::connect(&url, postgres::NoTls).expect("a client on the test database")))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let _ = off_runtime(move || -> Result<(), postgres::Error> {
            let mut c = postgres::Client::connect(&admin, postgres::NoTls)?;
            c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        });
    }
}
