//! The state database: one SQLite file in `--data-dir` (WAL, `synchronous=FULL`), migrated by
//! `PRAGMA user_version`, written by exactly one thread.
//!
//! Writers submit closures; the writer thread runs every closure queued at that moment inside one
//! transaction (each in its own savepoint, so one failing job does not undo the others), commits
//! once — one fsync for the group — and only then answers each caller. An answer therefore means
//! "durable". Readers open their own connections (WAL lets them run beside the writer).
//!
//! A *deferred* job ([`Store::write_deferred`]: outcome records, quota counters — writes nobody
//! waits on before answering a client) does not start a commit of its own: it waits for the
//! next group that something else starts, or at most [`DEFER_MAX`], and is committed with it.
//! Its answer still means durable. [`Store::close`] commits everything queued and stops the
//! writer: a clean shutdown loses nothing that was submitted before it.
//!
//! Blocking: rusqlite only ever runs on the writer thread or on a caller's blocking thread, never
//! on an async worker.

mod schema;

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

/// The database file inside the data directory.
pub const FILE: &str = "gatehouse.db";
/// How long a connection waits for a lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Most jobs committed in one transaction.
const MAX_GROUP: usize = 1024;
/// Longest a deferred job waits for another job's commit before it is committed on its own.
pub const DEFER_MAX: Duration = Duration::from_millis(100);
/// Prepared statements kept by the writer's connection (the call log's, quotas', savepoints…).
const STATEMENT_CACHE: usize = 64;

/// Why a write did not become durable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("state database error: {0}")]
    Sqlite(String),
    #[error("state database writer has stopped")]
    Stopped,
}

/// A handle to the state database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    path: PathBuf,
    jobs: std_mpsc::SyncSender<Msg>,
    /// The writer thread, until [`Store::close`] joins it.
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

/// What a job hands back after running: whether it succeeded, and how to answer its caller once
/// the group's commit is known.
type Done = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// Runs a job (`None` when no transaction could be begun: it is answered without running) and
/// says whether it succeeded.
type Run = Box<dyn FnOnce(Option<&Connection>) -> (bool, Done) + Send>;

struct Job {
    run: Run,
    /// Waits for the next group instead of starting one (at most [`DEFER_MAX`]).
    deferred: bool,
}

enum Msg {
    Job(Job),
    /// Commit everything queued, stop, then answer.
    Stop(oneshot::Sender<()>),
}

// === impl Store ===

impl Store {
    /// Opens (creating if needed) the database in `dir`, migrates it, and starts the writer.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Sqlite(format!("creating {}: {e}", dir.display())))?;
        let path = dir.join(FILE);
        let mut conn = open_conn(&path, false)?;
        schema::migrate(&mut conn).map_err(sql)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let (tx, rx) = std_mpsc::sync_channel::<Msg>(16 * 1024);
        let thread = std::thread::Builder::new()
            .name("gatehouse-store".into())
            .spawn(move || writer(conn, rx))
            .map_err(|e| StoreError::Sqlite(format!("starting the writer thread: {e}")))?;
        Ok(Store { path, jobs: tx, thread: Arc::new(Mutex::new(Some(thread))) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in the writer's next transaction; resolves once it is committed.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let rx = self.submit(f, false)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// Queues `f` for the writer's next transaction without starting one: it rides the next
    /// group another write starts, or is committed on its own after at most [`DEFER_MAX`].
    /// The job is queued when this returns (so a later [`Store::close`] commits it); the returned
    /// future resolves once it is committed.
    pub fn write_deferred<T, F>(&self, f: F) -> impl Future<Output = Result<T, StoreError>> + Send + use<T, F>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let rx = self.submit(f, true);
        async move { rx?.await.map_err(|_| StoreError::Stopped)? }
    }

    /// The same as [`Store::write`], for callers outside the async runtime.
    pub fn write_blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let rx = self.submit(f, false)?;
        rx.blocking_recv().map_err(|_| StoreError::Stopped)?
    }

    /// Resolves once everything submitted before it (deferred jobs included) is committed.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.write(|_| Ok(())).await
    }

    /// Commits everything queued (deferred jobs included), stops the writer thread and joins
    /// it. Later writes fail with [`StoreError::Stopped`]. Idempotent; every clone shares the
    /// writer, so this stops it for all of them. Blocking: call from a blocking thread (or see
    /// [`Store::close`]).
    pub fn close_blocking(&self) {
        let (tx, rx) = oneshot::channel();
        if self.jobs.send(Msg::Stop(tx)).is_ok() {
            let _ = rx.blocking_recv();
        }
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }

    /// [`Store::close_blocking`] on a blocking thread.
    pub async fn close(&self) {
        let store = self.clone();
        let _ = tokio::task::spawn_blocking(move || store.close_blocking()).await;
    }

    fn submit<T, F>(&self, f: F, deferred: bool) -> Result<oneshot::Receiver<Result<T, StoreError>>, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        // Runs `f` (or, with no connection, skips it) and returns how to answer once the group's
        // commit is known: a result is only reported after it is durable.
        let run = Box::new(move |conn: Option<&Connection>| -> (bool, Done) {
            let outcome = match conn {
                Some(c) => f(c).map_err(sql),
                None => Err(StoreError::Stopped),
            };
            let ok = outcome.is_ok();
            let reply = Box::new(move |committed: Result<(), StoreError>| {
                let _ = tx.send(match (outcome, committed) {
                    (Ok(v), Ok(())) => Ok(v),
                    (_, Err(e)) | (Err(e), Ok(())) => Err(e),
                });
            }) as Done;
            (ok, reply)
        });
        self.jobs.send(Msg::Job(Job { run, deferred })).map_err(|_| StoreError::Stopped)?;
        Ok(rx)
    }

    /// A read-only connection of its own (blocking; use from a blocking thread).
    pub fn reader(&self) -> Result<Connection, StoreError> {
        open_conn(&self.path, true)
    }
}

/// Opens a read-only connection to the database in `dir` without migrating or writing (for
/// `gatehouse status`-style commands run beside a daemon).
pub fn open_read_only(dir: &Path) -> Result<Connection, StoreError> {
    open_conn(&dir.join(FILE), true)
}

fn open_conn(path: &Path, read_only: bool) -> Result<Connection, StoreError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags).map_err(|e| StoreError::Sqlite(format!("opening {}: {e}", path.display())))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sql)?;
    if !read_only {
        // WAL: readers never block the writer. FULL: a commit is on disk before it is
        // acknowledged (the audit log is write-ahead); group commit keeps that affordable.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(sql)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(sql)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(sql)?;
    }
    Ok(conn)
}

fn sql(e: rusqlite::Error) -> StoreError {
    StoreError::Sqlite(e.to_string())
}

/// The writer thread: group everything queued, one transaction, one commit, then answer.
/// Deferred jobs wait (at most [`DEFER_MAX`]) for a job that is not, and join its group.
fn writer(conn: Connection, rx: std_mpsc::Receiver<Msg>) {
    let mut group: Vec<Job> = Vec::new();
    // Set while `group` holds only deferred jobs: when they are committed on their own.
    let mut deadline: Option<Instant> = None;
    loop {
        let msg = match deadline {
            None => rx.recv().map_err(|_| std_mpsc::RecvTimeoutError::Disconnected),
            Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
        };
        let mut commit_now = false;
        let mut stop = None;
        match msg {
            Ok(Msg::Job(j)) => {
                commit_now |= !j.deferred;
                group.push(j);
            }
            Ok(Msg::Stop(ack)) => stop = Some(ack),
            Err(std_mpsc::RecvTimeoutError::Timeout) => commit_now = true,
            // Every handle is gone: nothing more can come.
            Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                commit_group(&conn, std::mem::take(&mut group));
                return;
            }
        }
        // Everything else queued at this moment joins the group (after a stop: everything
        // already queued behind it, so that a racing submitter is not dropped needlessly).
        while group.len() < MAX_GROUP || stop.is_some() {
            match rx.try_recv() {
                Ok(Msg::Job(j)) => {
                    commit_now |= !j.deferred;
                    group.push(j);
                    if group.len() >= MAX_GROUP && stop.is_some() {
                        commit_group(&conn, std::mem::take(&mut group));
                    }
                }
                Ok(Msg::Stop(ack)) => {
                    // A second close: answered when the first one is.
                    if let Some(first) = stop.replace(ack) {
                        let _ = first.send(());
                    }
                }
                Err(_) => break,
            }
        }
        if let Some(ack) = stop {
            commit_group(&conn, std::mem::take(&mut group));
            drop(conn);
            let _ = ack.send(());
            return;
        }
        if commit_now || group.len() >= MAX_GROUP {
            commit_group(&conn, std::mem::take(&mut group));
            deadline = None;
        } else if deadline.is_none() && !group.is_empty() {
            deadline = Some(Instant::now() + DEFER_MAX);
        }
    }
}

/// Runs `group` in one transaction (each job in its own savepoint), commits once, then answers
/// every job with the commit's result.
fn commit_group(conn: &Connection, group: Vec<Job>) {
    if group.is_empty() {
        return;
    }
    if let Err(e) = exec_cached(conn, "BEGIN IMMEDIATE") {
        let e = sql(e);
        tracing::error!(error = %e, "state database: cannot begin a transaction");
        for job in group {
            let (_, reply) = (job.run)(None);
            reply(Err(e.clone()));
        }
        return;
    }
    let mut done: Vec<Done> = Vec::with_capacity(group.len());
    let mut jobs = group.into_iter();
    let mut aborted = None;
    for job in jobs.by_ref() {
        let _ = exec_cached(conn, "SAVEPOINT job");
        let (ok, reply) = (job.run)(Some(conn));
        done.push(reply);
        if ok {
            let _ = exec_cached(conn, "RELEASE job");
        } else if conn.is_autocommit() {
            // SQLITE_FULL, IOERR and friends roll the whole transaction back: the jobs
            // before this one are gone too, and the rest must not run outside it.
            aborted = Some(StoreError::Sqlite("the transaction was rolled back by the database (disk full or I/O error)".into()));
            break;
        } else {
            let _ = exec_cached(conn, "ROLLBACK TO job").and_then(|_| exec_cached(conn, "RELEASE job"));
        }
    }
    let committed = match aborted {
        Some(e) => {
            for job in jobs {
                let (_, reply) = (job.run)(None);
                done.push(reply);
            }
            Err(e)
        }
        None => exec_cached(conn, "COMMIT").map_err(sql),
    };
    if committed.is_err() {
        let _ = exec_cached(conn, "ROLLBACK");
    }
    for reply in done {
        reply(committed.clone());
    }
}

/// Runs one parameterless statement through the connection's statement cache (the writer runs
/// BEGIN, SAVEPOINT, RELEASE and COMMIT for every group and job).
fn exec_cached(conn: &Connection, statement: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(statement)?.execute([]).map(|_| ())
}

#[cfg(test)]
mod tests;
