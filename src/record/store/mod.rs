//! The state database: one SQLite file in `--data-dir` (WAL, `synchronous=FULL`, migrated by
//! `PRAGMA user_version`), or a PostgreSQL database shared by several replicas (`--database`,
//! `synchronous_commit` on, migrated through a `schema_version` table); either way written by
//! exactly one thread per process. Jobs run the same SQL on both ([`sql`]).
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
//! PostgreSQL going away fails the groups in flight (their callers are refused: fail closed);
//! the writer reconnects on the next group, at most once per [`RECONNECT_EVERY`], so the daemon
//! recovers without a restart. [`Store::healthy`] says whether the last group committed.
//!
//! Blocking: rusqlite and the sync postgres client only ever run on the writer thread or on a
//! caller's blocking thread, never on an async worker.

mod schema;
pub mod sql;

use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

pub use sql::{Conn, Location, Reader};
use sql::PgConn;

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
/// Least time between two attempts to reconnect to PostgreSQL (groups in between fail at once).
pub const RECONNECT_EVERY: Duration = Duration::from_millis(500);

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
    location: Location,
    /// The SQLite file (empty on PostgreSQL).
    path: std::path::PathBuf,
    /// Whether the last group committed (false while PostgreSQL is unreachable).
    healthy: Arc<AtomicBool>,
    jobs: std_mpsc::SyncSender<Msg>,
    /// The writer thread, until [`Store::close`] joins it.
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

/// What a job hands back after running: whether it succeeded, and how to answer its caller once
/// the group's commit is known.
type Done = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// Runs a job (`None` when no transaction could be begun: it is answered without running) and
/// says whether it succeeded.
type Run = Box<dyn FnOnce(Option<&Conn>) -> (bool, Done) + Send>;

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
    /// Opens (creating if needed) the SQLite database in `dir`, migrates it, and starts the writer.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_at(&Location::Dir(dir.to_path_buf()))
    }

    /// Opens the database at `at` (a data directory's SQLite file, or PostgreSQL), migrates it,
    /// and starts the writer. Blocking.
    pub fn open_at(at: &Location) -> Result<Store, StoreError> {
        let backend = match at {
            Location::Dir(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Sqlite(format!("creating {}: {e}", dir.display())))?;
                let mut conn = open_conn(&dir.join(FILE), false)?;
                schema::migrate(&mut conn).map_err(lite_err)?;
                conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
                Backend::Lite(conn)
            }
            Location::Postgres(url) => {
                let mut pg = PgConn::connect(url).map_err(|e| StoreError::Sqlite(format!("connecting to {}: {e}", sql::redact(url))))?;
                schema::migrate_pg(&mut pg).map_err(|e| StoreError::Sqlite(format!("migrating {}: {e}", sql::redact(url))))?;
                Backend::Pg { url: url.clone(), conn: Some(Box::new(RefCell::new(pg))), last_try: None }
            }
        };
        let healthy = Arc::new(AtomicBool::new(true));
        let (tx, rx) = std_mpsc::sync_channel::<Msg>(16 * 1024);
        let h = healthy.clone();
        let thread = std::thread::Builder::new()
            .name("gatehouse-store".into())
            .spawn(move || writer(backend, rx, h))
            .map_err(|e| StoreError::Sqlite(format!("starting the writer thread: {e}")))?;
        let path = match at {
            Location::Dir(d) => d.join(FILE),
            Location::Postgres(_) => std::path::PathBuf::new(),
        };
        Ok(Store { location: at.clone(), path, healthy, jobs: tx, thread: Arc::new(Mutex::new(Some(thread))) })
    }

    /// The SQLite file (empty on PostgreSQL).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the state lives.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Whether the last group of writes committed (false while the database is unreachable).
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Runs `f` in the writer's next transaction; resolves once it is committed.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Conn) -> Result<T, E> + Send + 'static,
        E: Into<sql::Error>,
    {
        let rx = self.submit(f, false)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// Queues `f` for the writer's next transaction without starting one: it rides the next
    /// group another write starts, or is committed on its own after at most [`DEFER_MAX`].
    /// The job is queued when this returns (so a later [`Store::close`] commits it); the returned
    /// future resolves once it is committed.
    pub fn write_deferred<T, E, F>(&self, f: F) -> impl Future<Output = Result<T, StoreError>> + Send + use<T, E, F>
    where
        T: Send + 'static,
        F: FnOnce(&Conn) -> Result<T, E> + Send + 'static,
        E: Into<sql::Error>,
    {
        let rx = self.submit(f, true);
        async move { rx?.await.map_err(|_| StoreError::Stopped)? }
    }

    /// The same as [`Store::write`], for callers outside the async runtime.
    pub fn write_blocking<T, E, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Conn) -> Result<T, E> + Send + 'static,
        E: Into<sql::Error>,
    {
        let rx = self.submit(f, false)?;
        rx.blocking_recv().map_err(|_| StoreError::Stopped)?
    }

    /// Resolves once everything submitted before it (deferred jobs included) is committed.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.write(|_| Ok::<(), sql::Error>(())).await
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

    fn submit<T, E, F>(&self, f: F, deferred: bool) -> Result<oneshot::Receiver<Result<T, StoreError>>, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Conn) -> Result<T, E> + Send + 'static,
        E: Into<sql::Error>,
    {
        let (tx, rx) = oneshot::channel();
        // Runs `f` (or, with no connection, skips it) and returns how to answer once the group's
        // commit is known: a result is only reported after it is durable.
        let run = Box::new(move |conn: Option<&Conn>| -> (bool, Done) {
            let outcome = match conn {
                Some(c) => f(c).map_err(|e| StoreError::Sqlite(e.into().to_string())),
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

    /// A read-only SQLite connection of its own (blocking; use from a blocking thread). SQLite
    /// only: see [`Store::read`] for either backend.
    pub fn reader(&self) -> Result<Connection, StoreError> {
        match &self.location {
            Location::Dir(d) => open_conn(&d.join(FILE), true),
            Location::Postgres(_) => Err(StoreError::Sqlite("a SQLite reader of a PostgreSQL store".into())),
        }
    }

    /// A read connection of its own, on either backend (blocking; use from a blocking thread).
    pub fn read(&self) -> Result<Reader, StoreError> {
        Reader::open(&self.location)
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
    conn.busy_timeout(BUSY_TIMEOUT).map_err(lite_err)?;
    if !read_only {
        // WAL: readers never block the writer. FULL: a commit is on disk before it is
        // acknowledged (the audit log is write-ahead); group commit keeps that affordable.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(lite_err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(lite_err)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(lite_err)?;
    }
    Ok(conn)
}

fn lite_err(e: rusqlite::Error) -> StoreError {
    StoreError::Sqlite(e.to_string())
}

/// The writer thread: group everything queued, one transaction, one commit, then answer.
/// Deferred jobs wait (at most [`DEFER_MAX`]) for a job that is not, and join its group.
fn writer(mut conn: Backend, rx: std_mpsc::Receiver<Msg>, healthy: Arc<AtomicBool>) {
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
                healthy.store(commit_group(&mut conn, std::mem::take(&mut group)), Ordering::Relaxed);
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
                        healthy.store(commit_group(&mut conn, std::mem::take(&mut group)), Ordering::Relaxed);
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
            healthy.store(commit_group(&mut conn, std::mem::take(&mut group)), Ordering::Relaxed);
            drop(conn);
            let _ = ack.send(());
            return;
        }
        if commit_now || group.len() >= MAX_GROUP {
            healthy.store(commit_group(&mut conn, std::mem::take(&mut group)), Ordering::Relaxed);
            deadline = None;
        } else if deadline.is_none() && !group.is_empty() {
            deadline = Some(Instant::now() + DEFER_MAX);
        }
    }
}

/// The writer's connection.
enum Backend {
    Lite(Connection),
    /// `conn` is None after the connection failed, until a reconnect succeeds. Boxed: the
    /// client is large, and the enum lives on the writer's stack.
    Pg { url: String, conn: Option<Box<RefCell<PgConn>>>, last_try: Option<Instant> },
}

// === impl Backend ===

impl Backend {
    /// The connection to run a group on, reconnecting to PostgreSQL when it was lost (at most
    /// once per [`RECONNECT_EVERY`]).
    fn conn(&mut self) -> Result<Conn<'_>, StoreError> {
        match self {
            Backend::Lite(c) => Ok(Conn::Lite(c)),
            Backend::Pg { url, conn, last_try } => {
                if conn.is_none() {
                    if last_try.is_some_and(|t| t.elapsed() < RECONNECT_EVERY) {
                        return Err(StoreError::Sqlite("the state database is unreachable (reconnecting)".into()));
                    }
                    *last_try = Some(Instant::now());
                    match PgConn::connect(url) {
                        Ok(pg) => {
                            tracing::info!("state database: reconnected to PostgreSQL");
                            *conn = Some(Box::new(RefCell::new(pg)));
                        }
                        Err(e) => return Err(StoreError::Sqlite(format!("the state database is unreachable: {e}"))),
                    }
                }
                Ok(Conn::Pg(conn.as_ref().expect("connected above")))
            }
        }
    }

    /// Forgets a PostgreSQL connection that failed: the next group reconnects.
    fn lost(&mut self) {
        if let Backend::Pg { conn, .. } = self
            && conn.take().is_some()
        {
            tracing::error!("state database: the PostgreSQL connection is lost; writes are refused until it returns");
        }
    }
}

/// Runs `group` in one transaction (each job in its own savepoint), commits once, then answers
/// every job with the commit's result. Returns whether it committed.
fn commit_group(backend: &mut Backend, group: Vec<Job>) -> bool {
    if group.is_empty() {
        return true;
    }
    let conn = match backend.conn() {
        Ok(c) => c,
        Err(e) => {
            for job in group {
                let (_, reply) = (job.run)(None);
                reply(Err(e.clone()));
            }
            return false;
        }
    };
    let pg = conn.is_pg();
    let size = group.len();
    // A job alone in its group on PostgreSQL needs no savepoint (round trips fewer on the
    // write-ahead path): if it fails, the transaction is aborted and COMMIT rolls it back.
    let savepoints = !pg || size > 1;
    // PostgreSQL: each savepoint change is one round trip: the first savepoint rides BEGIN,
    // and the statement after a job ends its savepoint and opens the next job's.
    let begin = match (pg, savepoints) {
        (false, _) => "BEGIN IMMEDIATE",
        (true, false) => "BEGIN",
        (true, true) => "BEGIN; SAVEPOINT job",
    };
    if let Err(e) = exec_cached(&conn, begin) {
        let lost = e.is_connection();
        let e = StoreError::Sqlite(e.to_string());
        tracing::error!(error = %e, "state database: cannot begin a transaction");
        for job in group {
            let (_, reply) = (job.run)(None);
            reply(Err(e.clone()));
        }
        if lost {
            backend.lost();
        }
        return false;
    }
    let mut done: Vec<Done> = Vec::with_capacity(size);
    let mut jobs = group.into_iter();
    let mut aborted = None;
    let mut ran = 0;
    let mut failed = false;
    for job in jobs.by_ref() {
        ran += 1;
        if !savepoints {
            let (ok, reply) = (job.run)(Some(&conn));
            failed |= !ok;
            done.push(reply);
            continue;
        }
        if pg {
            let (ok, reply) = (job.run)(Some(&conn));
            failed |= !ok;
            done.push(reply);
            let step = match (ok, ran == size) {
                (true, false) => Some("RELEASE SAVEPOINT job; SAVEPOINT job"),
                (false, false) => Some("ROLLBACK TO SAVEPOINT job; RELEASE SAVEPOINT job; SAVEPOINT job"),
                // COMMIT releases the last savepoint.
                (true, true) => None,
                (false, true) => Some("ROLLBACK TO SAVEPOINT job"),
            };
            if let Some(Err(e)) = step.map(|st| exec_cached(&conn, st)) {
                // The connection went away under the job.
                aborted = Some(StoreError::Sqlite(e.to_string()));
                break;
            }
            continue;
        }
        if let Err(e) = exec_cached(&conn, "SAVEPOINT job") {
            aborted = Some(StoreError::Sqlite(e.to_string()));
            done.push((job.run)(None).1);
            break;
        }
        let (ok, reply) = (job.run)(Some(&conn));
        failed |= !ok;
        done.push(reply);
        if ok {
            if let Err(e) = exec_cached(&conn, "RELEASE SAVEPOINT job") {
                aborted = Some(StoreError::Sqlite(e.to_string()));
                break;
            }
        } else if conn.sqlite().is_some_and(|c| c.is_autocommit()) {
            // SQLITE_FULL, IOERR and friends roll the whole transaction back: the jobs
            // before this one are gone too, and the rest must not run outside it.
            aborted = Some(StoreError::Sqlite("the transaction was rolled back by the database (disk full or I/O error)".into()));
            break;
        } else if let Err(e) = exec_cached(&conn, "ROLLBACK TO SAVEPOINT job").and_then(|_| exec_cached(&conn, "RELEASE SAVEPOINT job")) {
            aborted = Some(StoreError::Sqlite(e.to_string()));
            break;
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
        None => exec_cached(&conn, "COMMIT").map_err(|e| StoreError::Sqlite(e.to_string())),
    };
    let mut lost = false;
    if committed.is_err() && exec_cached(&conn, "ROLLBACK").is_err() && pg {
        lost = true;
    }
    if committed.is_err() && pg && !lost {
        // A failed statement or commit may be the connection's fault: check it.
        lost = exec_cached(&conn, "SELECT 1").is_err();
    }
    let ok = committed.is_ok();
    if !ok || failed {
        // Values a rolled-back job interned are gone with it.
        crate::record::audit::log::forget_interned(&conn);
    }
    for reply in done {
        reply(committed.clone());
    }
    if lost {
        backend.lost();
    }
    ok
}

/// Runs one parameterless statement through the connection's statement cache (the writer runs
/// BEGIN, SAVEPOINT, RELEASE and COMMIT for every group and job).
fn exec_cached(conn: &Conn, statement: &str) -> sql::Result<()> {
    match conn {
        Conn::Lite(c) => Ok(c.prepare_cached(statement)?.execute([]).map(|_| ())?),
        Conn::Pg(_) => conn.batch(statement),
    }
}

#[cfg(test)]
mod tests;
