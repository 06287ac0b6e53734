//! The state database: one SQLite file in `--data-dir` (WAL, `synchronous=FULL`), migrated by
//! `PRAGMA user_version`, written by exactly one thread.
//!
//! Writers submit closures; the writer thread runs every closure queued at that moment inside one
//! transaction (each in its own savepoint, so one failing job does not undo the others), commits
//! once — one fsync for the group — and only then answers each caller. An answer therefore means
//! "durable". Readers open their own connections (WAL lets them run beside the writer).
//!
//! Blocking: rusqlite only ever runs on the writer thread or on a caller's blocking thread, never
//! on an async worker.

mod schema;

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

/// The database file inside the data directory.
pub const FILE: &str = "gatehouse.db";
/// How long a connection waits for a lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Most jobs committed in one transaction.
const MAX_GROUP: usize = 1024;

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
    jobs: std_mpsc::SyncSender<Job>,
}

/// What a job hands back after running: whether it succeeded, and how to answer its caller once
/// the group's commit is known.
type Done = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// Runs a job (`None` when no transaction could be begun: it is answered without running) and
/// says whether it succeeded.
type Run = Box<dyn FnOnce(Option<&Connection>) -> (bool, Done) + Send>;

struct Job {
    run: Run,
}

// === impl Store ===

impl Store {
    /// Opens (creating if needed) the database in `dir`, migrates it, and starts the writer.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Sqlite(format!("creating {}: {e}", dir.display())))?;
        let path = dir.join(FILE);
        let mut conn = open_conn(&path, false)?;
        schema::migrate(&mut conn).map_err(sql)?;
        let (tx, rx) = std_mpsc::sync_channel::<Job>(16 * 1024);
        std::thread::Builder::new()
            .name("gatehouse-store".into())
            .spawn(move || writer(conn, rx))
            .map_err(|e| StoreError::Sqlite(format!("starting the writer thread: {e}")))?;
        Ok(Store { path, jobs: tx })
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
        let rx = self.submit(f)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// The same, for callers outside the async runtime.
    pub fn write_blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let rx = self.submit(f)?;
        rx.blocking_recv().map_err(|_| StoreError::Stopped)?
    }

    fn submit<T, F>(&self, f: F) -> Result<oneshot::Receiver<Result<T, StoreError>>, StoreError>
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
        self.jobs.send(Job { run }).map_err(|_| StoreError::Stopped)?;
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
fn writer(conn: Connection, rx: std_mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let e = sql(e);
            tracing::error!(error = %e, "state database: cannot begin a transaction");
            for job in group {
                let (_, reply) = (job.run)(None);
                reply(Err(e.clone()));
            }
            continue;
        }
        let mut done: Vec<Done> = Vec::with_capacity(group.len());
        let mut jobs = group.into_iter();
        let mut aborted = None;
        for job in jobs.by_ref() {
            let _ = conn.execute_batch("SAVEPOINT job");
            let (ok, reply) = (job.run)(Some(&conn));
            done.push(reply);
            if ok {
                let _ = conn.execute_batch("RELEASE job");
            } else if conn.is_autocommit() {
                // SQLITE_FULL, IOERR and friends roll the whole transaction back: the jobs
                // before this one are gone too, and the rest must not run outside it.
                aborted = Some(StoreError::Sqlite("the transaction was rolled back by the database (disk full or I/O error)".into()));
                break;
            } else {
                let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
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
            None => conn.execute_batch("COMMIT").map_err(sql),
        };
        if committed.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        for reply in done {
            reply(committed.clone());
        }
    }
}

#[cfg(test)]
mod tests;
