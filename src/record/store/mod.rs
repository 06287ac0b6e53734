//! The state database: one SQLite file in `--data-dir` (WAL, `synchronous=FULL`, migrated by
//! `PRAGMA user_version`), or a PostgreSQL database shared by several replicas (`--database`,
//! `synchronous_commit` on, migrated through a `schema_version` table); either way written by
//! exactly one thread per process. Jobs run the same SQL on both ([`sql`]).
//!
//! Writers submit closures; the writer thread runs every closure queued at that moment inside one
//! transaction (each in its own savepoint when there are several, so one failing job does not
//! undo the others), commits once — one fsync for the group — and only then answers each caller. An answer therefore means
//! "durable". Readers open their own connections (WAL lets them run beside the writer).
//!
//! A *deferred* job ([`Store::write_deferred`]: outcome records, quota counters — writes nobody
//! waits on before answering a client) does not start a commit of its own: it waits for the
//! next group that something else starts, or at most [`DEFER_MAX`], and is committed with it.
//! Its answer still means durable. Submitting never blocks, and wakes the writer only when it
//! must ([`Queue`]): a thread switch per record is most of what a durable record costs besides
//! its fsync. [`Store::close`] commits everything queued and stops the
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
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
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
/// Most jobs queued for the writer; beyond, writes are refused (fail closed) rather than queued
/// without bound behind a stalled disk or database.
const MAX_QUEUED: usize = 16 * 1024;
/// How long after its last group the writer keeps waking every [`DEFER_MAX`] by itself (so that
/// deferred jobs need not wake it); after that it sleeps until woken.
const POLL_AFTER_WORK: Duration = Duration::from_secs(10);
/// A caller commits inline only while the last inline commit took less than this.
const INLINE_UNDER: Duration = Duration::from_millis(2);
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
    /// The writer's queue; when the last handle goes, the writer commits what is queued and stops.
    jobs: Arc<Submitter>,
    /// The connection (None once the writer has stopped), held for each commit.
    holder: Arc<Mutex<Option<Holder>>>,
    /// A caller may commit its write inline (SQLite; see [`Store::write`]).
    inline: bool,
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

/// The jobs waiting for the writer thread. Submitting never blocks; it wakes the writer only
/// when the writer sleeps and the job cannot wait: a job someone awaits, or a deferred job
/// while the writer sleeps without a deadline. The writer sleeps with a deadline of
/// [`DEFER_MAX`] for [`POLL_AFTER_WORK`] after its last group, so under steady load deferred
/// jobs (every call's outcome record) cost no thread switch of their own.
struct Queue {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// How long the last commit took, in microseconds (inline commits stop while the disk is
    /// slow: see [`INLINE_UNDER`]).
    commit_us: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct Pending {
    jobs: Vec<Job>,
    /// A queued job is not deferred: the writer commits at once.
    urgent: bool,
    /// When the oldest queued deferred job was queued.
    oldest: Option<Instant>,
    /// No more jobs are accepted: a close was asked, every handle is gone, or the writer stopped.
    closed: bool,
    /// Close requests, answered once everything queued before them is committed.
    stops: Vec<oneshot::Sender<()>>,
    /// The writer has stopped (its thread is gone or going).
    gone: bool,
    /// The writer sleeps (with or without a deadline) and has not been woken yet.
    asleep: bool,
    /// … without a deadline: only a wake-up will make it commit a deferred job.
    idle: bool,
    /// When a group was last committed (by the writer or inline).
    last_commit: Option<Instant>,
}

/// Owned by every [`Store`] clone through one `Arc`: dropping the last one closes the queue.
struct Submitter(Arc<Queue>);

impl Drop for Submitter {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.wake.notify_one();
    }
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, job: Job) -> Result<(), StoreError> {
        let mut p = self.lock();
        if p.closed {
            return Err(StoreError::Stopped);
        }
        if p.jobs.len() >= MAX_QUEUED {
            return Err(StoreError::Sqlite(format!("the state database is {MAX_QUEUED} writes behind; refusing more until it catches up")));
        }
        let wake = if job.deferred {
            p.oldest.get_or_insert_with(Instant::now);
            p.idle
        } else {
            let first = !p.urgent;
            p.urgent = true;
            first && p.asleep
        };
        p.jobs.push(job);
        if wake {
            p.asleep = false;
            p.idle = false;
        }
        drop(p);
        if wake {
            self.wake.notify_one();
        }
        Ok(())
    }
}

thread_local! {
    /// Requests being served on this thread ([`serving`]).
    static SERVING: Arc<AtomicUsize> = Arc::default();
}

/// Counts a request served on this thread until the guard drops. A write commits inline
/// ([`Store::write`]) only from a thread serving at most one request: an inline commit blocks
/// its thread, which would delay the other requests (and their writes would not share its
/// commit). The guard may drop on another thread; it counts down where it counted up.
pub fn serving() -> Serving {
    let count = SERVING.with(Arc::clone);
    count.fetch_add(1, Ordering::Relaxed);
    Serving(count)
}

/// See [`serving`].
pub struct Serving(Arc<AtomicUsize>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
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
        let inline = matches!(backend, Backend::Lite(_));
        let holder = Arc::new(Mutex::new(Some(Holder { backend, kept: Kept::new() })));
        let healthy = Arc::new(AtomicBool::new(true));
        let queue = Arc::new(Queue { pending: Mutex::new(Pending::default()), wake: Condvar::new(), commit_us: Default::default() });
        let (q, h, held) = (queue.clone(), healthy.clone(), holder.clone());
        let thread = std::thread::Builder::new()
            .name("gatehouse-store".into())
            .spawn(move || writer(held, q, h))
            .map_err(|e| StoreError::Sqlite(format!("starting the writer thread: {e}")))?;
        let path = match at {
            Location::Dir(d) => d.join(FILE),
            Location::Postgres(_) => std::path::PathBuf::new(),
        };
        Ok(Store {
            location: at.clone(),
            path,
            healthy,
            jobs: Arc::new(Submitter(queue)),
            holder,
            inline,
            thread: Arc::new(Mutex::new(Some(thread))),
        })
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
        let f = match self.try_inline(f) {
            Ok(done) => return done,
            Err(f) => f,
        };
        let rx = self.submit(f, false)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// Commits `f` on the calling thread when nothing waits for the writer (no queued job that
    /// someone awaits, the connection free, the thread serving one request at most: [`serving`]),
    /// on SQLite, while commits are fast: the deferred jobs
    /// queued so far ride along. This spares the two thread switches of a hand-off to the writer
    /// and back, which cost more CPU than the commit's fsync; under load the queue is rarely
    /// empty and groups form on the writer as before. It blocks the caller for one commit (an
    /// async worker, for [`INLINE_UNDER`] at most as last measured): `Err(f)` when it would not.
    fn try_inline<T, E, F>(&self, f: F) -> Result<Result<T, StoreError>, F>
    where
        T: Send + 'static,
        F: FnOnce(&Conn) -> Result<T, E> + Send + 'static,
        E: Into<sql::Error>,
    {
        let queue = &self.jobs.0;
        if !self.inline || queue.commit_us.load(Ordering::Relaxed) > INLINE_UNDER.as_micros() as u64 || SERVING.with(|s| s.load(Ordering::Relaxed)) > 1 {
            return Err(f);
        }
        let Ok(mut held) = self.holder.try_lock() else { return Err(f) };
        let Some(h) = held.as_mut() else { return Err(f) };
        let mut group = {
            let mut p = queue.lock();
            if p.urgent || p.closed {
                return Err(f);
            }
            p.oldest = None;
            std::mem::take(&mut p.jobs)
        };
        let answer = Arc::new(Mutex::new(None));
        let out = answer.clone();
        let run = job_run(f, move |r| *out.lock().unwrap_or_else(|p| p.into_inner()) = Some(r));
        group.push(Job { run, deferred: false });
        // A job that panics is contained here (the writer thread would die of it): its
        // transaction is rolled back, the jobs of its group are dropped unanswered (their
        // callers see the store stopped), and the connection serves the next commit.
        let committed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.commit(group, queue)));
        match committed {
            Ok(ok) => self.healthy.store(ok, Ordering::Relaxed),
            Err(_) => {
                if let Ok(c) = h.backend.conn() {
                    let _ = exec_cached(&c, "ROLLBACK");
                }
                // What the group's jobs kept (a chain head they appended) was rolled back too.
                h.kept.clear();
                tracing::error!("state database: a write panicked; its transaction was rolled back");
            }
        }
        drop(held);
        queue.lock().last_commit = Some(Instant::now());
        let r = answer.lock().unwrap_or_else(|p| p.into_inner()).take();
        Ok(r.unwrap_or(Err(StoreError::Stopped)))
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

    /// [`Store::write_deferred`] for a write nobody awaits: `then` runs on the writer thread with
    /// the result once it is known (committed, or failed). No task and no wake-up of the caller's
    /// runtime: the cheapest durable write there is. `then` also runs (with
    /// [`StoreError::Stopped`]) when the job cannot be queued.
    pub fn write_deferred_then<T, E, F, G>(&self, f: F, then: G)
    where
        T: Send + 'static,
        F: FnOnce(&Conn) -> Result<T, E> + Send + 'static,
        E: Into<sql::Error>,
        G: FnOnce(Result<T, StoreError>) + Send + 'static,
    {
        let then = Arc::new(Mutex::new(Some(then)));
        let on_done = then.clone();
        let queued = self.submit_with(f, true, move |r| {
            if let Some(g) = on_done.lock().unwrap_or_else(|p| p.into_inner()).take() {
                g(r)
            }
        });
        if let Err(e) = queued
            && let Some(g) = then.lock().unwrap_or_else(|p| p.into_inner()).take()
        {
            g(Err(e))
        }
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
        let queue = &self.jobs.0;
        let mut p = queue.lock();
        if !p.gone {
            p.closed = true;
            p.stops.push(tx);
            drop(p);
            queue.wake.notify_one();
            let _ = rx.blocking_recv();
        } else {
            drop(p);
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
        self.submit_with(f, deferred, move |r| {
            let _ = tx.send(r);
        })?;
        Ok(rx)
    }

    /// Queues `f`; `answer` gets its result once the group's commit is known (a result is only
    /// reported after it is durable). A job dropped unrun (the writer stopped under it) is never
    /// answered: its caller sees its channel closed.
    fn submit_with<T, E, F, A>(&self, f: F, deferred: bool, answer: A) -> Result<(), StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Conn) -> Result<T, E> + Send + 'static,
        E: Into<sql::Error>,
        A: FnOnce(Result<T, StoreError>) + Send + 'static,
    {
        self.jobs.0.push(Job { run: job_run(f, answer), deferred })
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

/// A job that runs `f` (or, with no connection, skips it) and says how to answer: `answer` gets
/// its result once the group's commit is known (a result is only reported after it is durable).
fn job_run<T, E, F, A>(f: F, answer: A) -> Run
where
    T: Send + 'static,
    F: FnOnce(&Conn) -> Result<T, E> + Send + 'static,
    E: Into<sql::Error>,
    A: FnOnce(Result<T, StoreError>) + Send + 'static,
{
    Box::new(move |conn: Option<&Conn>| -> (bool, Done) {
        let outcome = match conn {
            Some(c) => f(c).map_err(|e| StoreError::Sqlite(e.into().to_string())),
            None => Err(StoreError::Stopped),
        };
        let ok = outcome.is_ok();
        let reply = Box::new(move |committed: Result<(), StoreError>| {
            answer(match (outcome, committed) {
                (Ok(v), Ok(())) => Ok(v),
                (_, Err(e)) | (Err(e), Ok(())) => Err(e),
            });
        }) as Done;
        (ok, reply)
    })
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

/// The writer thread: take what is queued (at most [`MAX_GROUP`]), one transaction, one commit,
/// then answer. Deferred jobs wait (at most [`DEFER_MAX`]) for a job that is not, and join its
/// group. After a close (or when every handle is gone) it commits everything queued, answers
/// the close requests and stops.
fn writer(holder: Arc<Mutex<Option<Holder>>>, queue: Arc<Queue>, healthy: Arc<AtomicBool>) {
    // If a job panics, the thread unwinds through this: jobs still queued are dropped (their
    // callers see [`StoreError::Stopped`]) and later submissions are refused at once.
    let _stopped = Stopped(queue.clone(), holder.clone());
    loop {
        let group = {
            let mut p = queue.lock();
            loop {
                let now = Instant::now();
                let ripe = p.oldest.is_some_and(|t| now >= t + DEFER_MAX);
                if p.urgent || p.closed || ripe || p.jobs.len() >= MAX_GROUP {
                    break;
                }
                let deadline = match p.oldest {
                    Some(t) => Some(t + DEFER_MAX),
                    None if p.last_commit.is_some_and(|t| now.duration_since(t) < POLL_AFTER_WORK) => Some(now + DEFER_MAX),
                    None => None,
                };
                p.asleep = true;
                p.idle = deadline.is_none();
                p = match deadline {
                    Some(d) => queue.wake.wait_timeout(p, d.saturating_duration_since(now)).unwrap_or_else(|e| e.into_inner()).0,
                    None => queue.wake.wait(p).unwrap_or_else(|e| e.into_inner()),
                };
                p.asleep = false;
                p.idle = false;
            }
            if p.jobs.is_empty() && p.closed {
                // Everything queued before the close is committed: the connection closes, then
                // the close requests are answered.
                drop(p);
                drop(lock_holder(&holder).take());
                let mut p = queue.lock();
                for ack in p.stops.drain(..) {
                    let _ = ack.send(());
                }
                p.gone = true;
                return;
            }
            let take = p.jobs.len().min(MAX_GROUP);
            let group: Vec<Job> = p.jobs.drain(..take).collect();
            // What stays behind (a group was full) is committed next, without waiting.
            p.urgent = !p.jobs.is_empty();
            p.oldest = None;
            group
        };
        let mut held = lock_holder(&holder);
        let Some(h) = held.as_mut() else { return };
        healthy.store(h.commit(group, &queue), Ordering::Relaxed);
        drop(held);
        queue.lock().last_commit = Some(Instant::now());
    }
}

fn lock_holder(h: &Mutex<Option<Holder>>) -> std::sync::MutexGuard<'_, Option<Holder>> {
    h.lock().unwrap_or_else(|p| p.into_inner())
}

/// Marks the queue stopped when the writer thread ends, however it ends, and closes the
/// connection.
struct Stopped(Arc<Queue>, Arc<Mutex<Option<Holder>>>);

impl Drop for Stopped {
    fn drop(&mut self) {
        drop(lock_holder(&self.1).take());
        let mut p = self.0.lock();
        p.closed = true;
        p.gone = true;
        let unrun = std::mem::take(&mut p.jobs);
        let stops = std::mem::take(&mut p.stops);
        drop(p);
        drop(unrun);
        drop(stops);
    }
}

/// What the holder of a store's connection keeps between jobs (the call log's chain heads and
/// interned ids), one value per type: the holder is the only writer of its connection, so what
/// a job read stays true until a job fails or a group does not commit, which clears it all.
type Kept = std::collections::HashMap<std::any::TypeId, Box<dyn std::any::Any + Send>>;

thread_local! {
    /// What the connection this thread holds now keeps ([`kept`]); `None` while it holds none.
    static HELD: RefCell<Option<Kept>> = const { RefCell::new(None) };
}

/// Runs `f` on the value of type `T` kept with the store connection the calling thread holds
/// (inside a job: the writer thread, or a caller committing inline); `None` on a thread that
/// holds no connection (read every time). `f` must not call `kept` itself.
pub fn kept<T: Default + Send + 'static, R>(f: impl FnOnce(&mut T) -> R) -> Option<R> {
    HELD.with_borrow_mut(|held| {
        let kept = held.as_mut()?;
        let v = kept.entry(std::any::TypeId::of::<T>()).or_insert_with(|| Box::new(T::default()));
        Some(f(v.downcast_mut::<T>().expect("kept by its type")))
    })
}

/// Lets the calling thread keep values ([`kept`]) across appends, as the holder of a store's
/// connection does, until the guard is dropped: for a thread that alone writes one database, in
/// transactions that do not fail, outside a [`Store`] (a bulk load, a benchmark's generator).
pub struct SoleWriter {
    before: Option<Kept>,
}

impl SoleWriter {
    pub fn enter() -> SoleWriter {
        SoleWriter { before: HELD.replace(Some(Kept::new())) }
    }
}

impl Drop for SoleWriter {
    fn drop(&mut self) {
        HELD.set(self.before.take());
    }
}

/// Something a job wrote may have been rolled back: what the connection keeps is void.
fn invalidate() {
    HELD.with_borrow_mut(|held| {
        if let Some(k) = held {
            k.clear();
        }
    });
}

/// The store's connection, its kept values, and how long its last commit took. Held by the
/// writer thread for each group, or by a caller committing inline ([`Store::write`]).
struct Holder {
    backend: Backend,
    kept: Kept,
}

impl Holder {
    /// Commits `group` with the kept values in this thread's reach (given back however it
    /// ends); says whether it committed and how long that took.
    fn commit(&mut self, group: Vec<Job>, queue: &Queue) -> bool {
        struct GiveBack<'a>(&'a mut Kept);
        impl Drop for GiveBack<'_> {
            fn drop(&mut self) {
                *self.0 = HELD.take().unwrap_or_default();
            }
        }
        let t = Instant::now();
        HELD.set(Some(std::mem::take(&mut self.kept)));
        let _give_back = GiveBack(&mut self.kept);
        let ok = commit_group(&mut self.backend, group);
        queue.commit_us.store(t.elapsed().as_micros() as u64, Ordering::Relaxed);
        ok
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
    // A job alone in its group needs no savepoint (two statements fewer on the write-ahead
    // path; round trips on PostgreSQL): if it fails, the whole transaction is rolled back.
    let savepoints = size > 1;
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
    // The job of a group of one failed: roll it back rather than commit what it half wrote.
    let mut alone_failed = false;
    let mut ran = 0;
    for job in jobs.by_ref() {
        ran += 1;
        if !savepoints {
            let (ok, reply) = (job.run)(Some(&conn));
            if !ok {
                invalidate();
                alone_failed = true;
            }
            done.push(reply);
            continue;
        }
        if pg {
            let (ok, reply) = (job.run)(Some(&conn));
            if !ok {
                invalidate();
            }
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
        done.push(reply);
        if !ok {
            invalidate();
        }
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
        // Its caller gets the job's own error; nothing else was in the transaction.
        None if alone_failed => match exec_cached(&conn, "ROLLBACK") {
            Ok(()) => Ok(()),
            Err(e) => Err(StoreError::Sqlite(e.to_string())),
        },
        None => exec_cached(&conn, "COMMIT").map_err(|e| StoreError::Sqlite(e.to_string())),
    };
    let mut lost = false;
    if committed.is_err() {
        invalidate();
    }
    if committed.is_err() && exec_cached(&conn, "ROLLBACK").is_err() && pg {
        lost = true;
    }
    if committed.is_err() && pg && !lost {
        // A failed statement or commit may be the connection's fault: check it.
        lost = exec_cached(&conn, "SELECT 1").is_err();
    }
    let ok = committed.is_ok();
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
