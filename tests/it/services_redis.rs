//! Redis for the tests that need one: the server at its standard loopback port (it keeps nothing
//! on disk), a fresh key prefix per test, and a TCP relay that a test can cut and restore to
//! play an outage without touching the server the other tests use.
//!
//! Without a Redis answering at 127.0.0.1:6379 a test prints one line and passes, unless
//! GATEHOUSE_REQUIRE_SERVICES is set.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// The test Redis.
pub const REDIS: &str = "127.0.0.1:6379";

/// `redis://127.0.0.1:6379` when it answers PING; else prints why not and returns None (or
/// fails under GATEHOUSE_REQUIRE_SERVICES).
pub async fn redis() -> Option<String> {
    let pong = async {
        let mut s = TcpStream::connect(REDIS).await.ok()?;
        s.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).await.ok()?;
        (&buf == b"+PONG\r\n").then_some(())
    };
    match tokio::time::timeout(Duration::from_secs(2), pong).await {
        Ok(Some(())) => Some(format!("redis://{REDIS}")),
        _ => {
            if std::env::var_os("GATEHOUSE_REQUIRE_SERVICES").is_some() {
                panic!("redis does not answer at {REDIS} and GATEHOUSE_REQUIRE_SERVICES is set");
            }
            println!("skipped: redis does not answer at {REDIS}");
            None
        }
    }
}

/// A key prefix no other test (or run) uses.
pub fn fresh_prefix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("it-{}-{nanos}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A TCP relay to Redis: `cut` closes every relayed connection and refuses new ones until
/// `restore`.
pub struct Relay {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl Relay {
    pub async fn start(target: &str) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (o, c, target) = (open.clone(), conns.clone(), target.to_string());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { return };
                if !o.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                c.lock().unwrap().push(task.abort_handle());
            }
        })
        .abort_handle();
        Relay { addr, open, conns, accept }
    }

    /// `redis://` URL of the relay.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// The outage: relayed connections are closed, new ones refused.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// Redis is back.
    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
