//! The proxy's event loops: one single-threaded tokio runtime per core ("shard"), each serving
//! the MCP connections handed to it.
//!
//! A connection and every task its requests spawn stay on one thread. Measured in
//! `benches/proxy_load.rs`, tokio's work-stealing runtime spent about a third of the gateway's
//! CPU per call waking, searching and parking its other workers (each I/O event woke a second
//! worker that found nothing to do); a thread per connection's work does not. The accept loop
//! stays on the daemon's runtime and hands each admitted connection to the shard holding the
//! fewest. What a shard does not do: steal another's work. A connection whose requests are
//! expensive slows the others on its shard only; with many connections the load evens out.
//!
//! Each shard sends to HTTP upstreams on connections of its own
//! ([`crate::gateway::upstream::use_thread_client`]): a call's upstream request does not cross
//! to the thread that happened to open the pooled connection.
//!
//! A write of the call log from a shard commits on the shard's thread only while that thread
//! serves a single request ([`crate::record::store::serving`]): blocking it then delays no one,
//! and with more requests the writes go to the store's writer thread, one commit for many.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;
use tracing::warn;

/// The threads' name (the kernel keeps 15 bytes of it).
pub const THREAD_NAME: &str = "gatehouse-proxy";

/// Running shards; [`Shards::stop`] ends them (dropping them without it detaches the threads,
/// which end when their stop sender is dropped).
pub struct Shards {
    shards: Vec<Shard>,
}

struct Shard {
    handle: tokio::runtime::Handle,
    /// Connections held.
    held: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Shards {
    /// Starts `n` shards (at least one).
    pub fn start(n: usize) -> std::io::Result<Shards> {
        let mut shards = Vec::with_capacity(n.max(1));
        for _ in 0..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().thread_name(THREAD_NAME).build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new().name(THREAD_NAME.into()).spawn(move || {
                crate::gateway::upstream::use_thread_client();
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                // Whatever is still running (an upstream's background task) is dropped.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })?;
            shards.push(Shard { handle, held: Arc::default(), stop: Some(stop), thread: Some(thread) });
        }
        Ok(Shards { shards })
    }

    /// How many shards the machine's cores call for.
    pub fn default_count() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    /// Runs `serve` (one connection) on the shard holding the fewest connections.
    pub fn spawn<F>(&self, serve: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let shard = self.shards.iter().min_by_key(|s| s.held.load(Ordering::Relaxed)).expect("at least one shard");
        let held = shard.held.clone();
        held.fetch_add(1, Ordering::Relaxed);
        shard.handle.spawn(async move {
            serve.await;
            held.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// Stops every shard and waits for its thread (on a blocking thread: a shard gives what it
    /// still runs a second to end).
    pub async fn stop(mut self) {
        let threads: Vec<_> = self
            .shards
            .iter_mut()
            .filter_map(|s| {
                s.stop.take().map(|stop| stop.send(()));
                s.thread.take()
            })
            .collect();
        let joined = tokio::task::spawn_blocking(move || threads.into_iter().all(|t| t.join().is_ok())).await;
        if !matches!(joined, Ok(true)) {
            warn!("a proxy thread ended with a panic");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_go_to_the_shard_holding_the_fewest_and_stay_on_its_thread() {
        let shards = Shards::start(2).unwrap();
        let (release, released) = tokio::sync::watch::channel(false);
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..4 {
            let (seen_tx, mut released) = (seen_tx.clone(), released.clone());
            shards.spawn(async move {
                let first = std::thread::current().id();
                assert_eq!(std::thread::current().name(), Some(THREAD_NAME));
                // Held open across an await, as a connection is.
                let _ = released.wait_for(|r| *r).await;
                let _ = seen_tx.send((first, std::thread::current().id()));
            });
        }
        assert_eq!(shards.shards.iter().map(|s| s.held.load(Ordering::Relaxed)).collect::<Vec<_>>(), [2, 2]);
        release.send(true).unwrap();
        let mut threads = std::collections::HashMap::new();
        for _ in 0..4 {
            let (first, last) = seen.recv().await.unwrap();
            assert_eq!(first, last, "a connection moved to another thread");
            *threads.entry(first).or_insert(0) += 1;
        }
        assert_eq!(threads.values().copied().collect::<Vec<_>>(), [2, 2]);
        tokio::time::timeout(Duration::from_secs(5), shards.stop()).await.expect("the shards stop");
    }
}
