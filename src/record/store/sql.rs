//! The SQL seam: one statement text runs on SQLite and on PostgreSQL.
//!
//! Statements are written once, in the common subset of both dialects, with SQLite's numbered
//! placeholders (`?1`, `?2`…); on PostgreSQL they become `$1`, `$2`… Parameters are a tiny enum
//! ([`P`]) whose Rust types match the PostgreSQL column types the schemas use (BIGINT ↔ i64,
//! DOUBLE PRECISION ↔ f64, TEXT ↔ str, BYTEA ↔ bytes), so no statement needs a cast. Where the dialects differ
//! (JSON access, upserts of computed values) the caller asks [`Conn::is_pg`] and writes both.
//!
//! [`Conn`] is what a store job or a reader gets: a borrowed SQLite connection, or a PostgreSQL
//! client (behind a `RefCell`: the sync client needs `&mut`) with its prepared statements.
//! Rows are read through [`Row`], borrowed in place on both backends.
//!
//! Blocking: both clients block; a `Conn` lives on the store's writer thread or a blocking
//! thread, never on an async worker (the sync PostgreSQL client even panics there).

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use postgres::types::{IsNull, ToSql, Type};

/// Where the state lives: a SQLite file in a data directory, or a PostgreSQL database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Dir(PathBuf),
    /// A `postgres://` URL (or key=value connection string).
    Postgres(String),
}

/// A statement that failed, on either backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{}", pg_text(.0))]
    Pg(#[from] postgres::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One parameter: the types the schemas use, each optional where a column may be NULL.
#[derive(Debug, Clone, Copy)]
pub enum P<'a> {
    Int(Option<i64>),
    Real(f64),
    Text(Option<&'a str>),
    /// BLOB (SQLite) ↔ BYTEA (PostgreSQL): the call log's hashes.
    Blob(&'a [u8]),
}

/// A PostgreSQL connection and the statements it has prepared (keyed by their SQLite text).
pub struct PgConn {
    pub client: postgres::Client,
    statements: HashMap<String, postgres::Statement>,
}

/// A connection a job or a reader runs statements on.
#[derive(Clone, Copy)]
pub enum Conn<'a> {
    Lite(&'a rusqlite::Connection),
    Pg(&'a RefCell<PgConn>),
}

/// One result row, borrowed.
pub enum Row<'a, 'b> {
    Lite(&'a rusqlite::Row<'b>),
    Pg(&'a postgres::Row),
}

/// An owned read connection: what `audit`, `evidence`, `plan --usage` and the daemon's start-up
/// read through.
pub enum Reader {
    Lite(rusqlite::Connection),
    Pg(Box<RefCell<PgConn>>),
}

// === impl Location ===

impl Location {
    /// `--database` (or `GATEHOUSE_DATABASE_URL`) when given, else the data directory's SQLite file.
    pub fn of(data_dir: &Path, database: Option<&str>) -> Location {
        match database.filter(|d| !d.trim().is_empty()) {
            Some(url) => Location::Postgres(url.to_string()),
            None => Location::Dir(data_dir.to_path_buf()),
        }
    }

    pub fn is_pg(&self) -> bool {
        matches!(self, Location::Postgres(_))
    }

    /// For messages and manifests: the SQLite file, or the PostgreSQL URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Location::Dir(d) => d.join(super::FILE).display().to_string(),
            Location::Postgres(url) => redact(url),
        }
    }
}

/// A URL with its password (`user:secret@`) replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    match rest.split_once('@') {
        Some((user, host)) if user.contains(':') => {
            let name = user.split(':').next().unwrap_or("");
            format!("{scheme}://{name}:***@{host}")
        }
        _ => url.to_string(),
    }
}

fn pg_text(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("postgres: {}: {}", db.code().code(), db.message()),
        None => format!("postgres: {e}"),
    }
}

// === impl Error ===

impl Error {
    /// Whether the connection itself failed (closed, refused, I/O): the writer reconnects.
    pub fn is_connection(&self) -> bool {
        match self {
            Error::Pg(e) => e.is_closed() || e.as_db_error().is_none() && e.code().is_none(),
            _ => false,
        }
    }
}

// === impl PgConn ===

impl PgConn {
    /// Connects (no TLS) with `synchronous_commit` on: a commit is acknowledged once it is
    /// durable on the server, which is what the write-ahead call log needs.
    pub fn connect(url: &str) -> Result<PgConn> {
        let mut config: postgres::Config = url.parse()?;
        config.connect_timeout(std::time::Duration::from_secs(5));
        // A server that vanishes without closing the connection (a cable, a partition) fails the
        // writes in flight within seconds instead of hanging the writer thread.
        config.tcp_user_timeout(std::time::Duration::from_secs(10));
        config.keepalives(true).keepalives_idle(std::time::Duration::from_secs(10));
        config.application_name("gatehouse");
        let mut client = config.connect(postgres::NoTls)?;
        client.batch_execute("SET synchronous_commit = on")?;
        Ok(PgConn { client, statements: HashMap::new() })
    }

    fn prepared(&mut self, sql: &str) -> Result<postgres::Statement> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(&placeholders(sql))?;
        if self.statements.len() < 256 {
            self.statements.insert(sql.to_string(), s.clone());
        }
        Ok(s)
    }
}

/// `?N` → `$N` (outside quoted strings).
pub fn placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            quoted = !quoted;
        }
        if c == '?' && !quoted && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

// === impl P ===

impl From<i64> for P<'_> {
    fn from(v: i64) -> Self {
        P::Int(Some(v))
    }
}
impl From<Option<i64>> for P<'_> {
    fn from(v: Option<i64>) -> Self {
        P::Int(v)
    }
}
impl From<u64> for P<'_> {
    fn from(v: u64) -> Self {
        P::Int(Some(v as i64))
    }
}
impl From<f64> for P<'_> {
    fn from(v: f64) -> Self {
        P::Real(v)
    }
}
impl<'a> From<&'a str> for P<'a> {
    fn from(v: &'a str) -> Self {
        P::Text(Some(v))
    }
}
impl<'a> From<&'a String> for P<'a> {
    fn from(v: &'a String) -> Self {
        P::Text(Some(v))
    }
}
impl<'a> From<Option<&'a str>> for P<'a> {
    fn from(v: Option<&'a str>) -> Self {
        P::Text(v)
    }
}
impl<'a> From<&'a [u8]> for P<'a> {
    fn from(v: &'a [u8]) -> Self {
        P::Blob(v)
    }
}
impl<'a> From<&'a Option<String>> for P<'a> {
    fn from(v: &'a Option<String>) -> Self {
        P::Text(v.as_deref())
    }
}

impl rusqlite::ToSql for P<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            P::Int(v) => rusqlite::ToSql::to_sql(v),
            P::Real(v) => rusqlite::ToSql::to_sql(v),
            P::Text(v) => rusqlite::ToSql::to_sql(v),
            P::Blob(v) => rusqlite::ToSql::to_sql(v),
        }
    }
}

impl ToSql for P<'_> {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            P::Int(v) => v.to_sql(ty, out),
            P::Real(v) => v.to_sql(ty, out),
            P::Text(v) => v.to_sql(ty, out),
            P::Blob(v) => v.to_sql(ty, out),
        }
    }

    /// Each variant is checked against the column type by its own value's rules, in
    /// `to_sql_checked`.
    fn accepts(_: &Type) -> bool {
        true
    }

    fn to_sql_checked(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            P::Int(v) => v.to_sql_checked(ty, out),
            P::Real(v) => v.to_sql_checked(ty, out),
            P::Text(v) => v.to_sql_checked(ty, out),
            P::Blob(v) => v.to_sql_checked(ty, out),
        }
    }
}

fn pg_params<'p>(params: &'p [P<'p>]) -> Vec<&'p (dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

/// Builds a parameter list: `params![a, b, c]`.
#[macro_export]
macro_rules! sql_params {
    ($($p:expr),* $(,)?) => { &[$($crate::record::store::sql::P::from($p)),*][..] };
}
pub use crate::sql_params as params;

// === impl Conn ===

impl<'a> From<&'a rusqlite::Connection> for Conn<'a> {
    fn from(c: &'a rusqlite::Connection) -> Conn<'a> {
        Conn::Lite(c)
    }
}

impl<'a> From<&Conn<'a>> for Conn<'a> {
    fn from(c: &Conn<'a>) -> Conn<'a> {
        *c
    }
}

impl<'a> From<&'a Reader> for Conn<'a> {
    fn from(r: &'a Reader) -> Conn<'a> {
        r.conn()
    }
}

impl Conn<'_> {
    pub fn is_pg(&self) -> bool {
        matches!(self, Conn::Pg(_))
    }

    /// The SQLite connection (tests and SQLite-only maintenance); None on PostgreSQL.
    pub fn sqlite(&self) -> Option<&rusqlite::Connection> {
        match self {
            Conn::Lite(c) => Some(c),
            Conn::Pg(_) => None,
        }
    }

    /// SQL for the milliseconds since the epoch of `column`, a text column of RFC 3339 UTC times
    /// (`2026-11-26T07:13:39.123Z`); NULL where it holds none.
    pub fn text_ms(&self, column: &str) -> String {
        match self {
            Conn::Lite(_) => format!("CAST(round(unixepoch({column}, 'subsec') * 1000) AS INTEGER)"),
            Conn::Pg(_) => format!(
                "CASE WHEN {column} ~ '^[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}T[0-9]{{2}}:[0-9]{{2}}:[0-9]{{2}}([.][0-9]{{1,6}})?Z$' \
                 THEN round(extract(epoch FROM CAST({column} AS timestamptz)) * 1000)::bigint END"
            ),
        }
    }

    /// Runs one statement; returns the rows it changed.
    pub fn exec(&self, sql: &str, params: &[P]) -> Result<u64> {
        match self {
            Conn::Lite(c) => Ok(c.prepare_cached(sql)?.execute(rusqlite::params_from_iter(params.iter()))? as u64),
            Conn::Pg(pg) => {
                let mut pg = pg.borrow_mut();
                let stmt = pg.prepared(sql)?;
                let ps = pg_params(params);
                Ok(pg.client.execute(&stmt, &ps)?)
            }
        }
    }

    /// Runs statements without parameters (DDL, transaction control).
    pub fn batch(&self, sql: &str) -> Result<()> {
        match self {
            Conn::Lite(c) => Ok(c.execute_batch(sql)?),
            Conn::Pg(pg) => Ok(pg.borrow_mut().client.batch_execute(sql)?),
        }
    }

    /// Calls `f` on each row in order. SQLite streams; PostgreSQL rows are fetched first (so
    /// `f` may run other statements on this connection).
    pub fn each<F>(&self, sql: &str, params: &[P], mut f: F) -> Result<()>
    where
        F: FnMut(&Row) -> Result<()>,
    {
        match self {
            Conn::Lite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(params.iter()))?;
                while let Some(r) = rows.next()? {
                    f(&Row::Lite(r))?;
                }
                Ok(())
            }
            Conn::Pg(pg) => {
                let rows = {
                    let mut pg = pg.borrow_mut();
                    let stmt = pg.prepared(sql)?;
                    let ps = pg_params(params);
                    pg.client.query(&stmt, &ps)?
                };
                for r in &rows {
                    f(&Row::Pg(r))?;
                }
                Ok(())
            }
        }
    }

    /// Every row, mapped.
    pub fn query<T, F>(&self, sql: &str, params: &[P], mut f: F) -> Result<Vec<T>>
    where
        F: FnMut(&Row) -> Result<T>,
    {
        let mut out = Vec::new();
        self.each(sql, params, |r| {
            out.push(f(r)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// The first row, mapped, if there is one.
    pub fn query_opt<T, F>(&self, sql: &str, params: &[P], f: F) -> Result<Option<T>>
    where
        F: FnMut(&Row) -> Result<T>,
    {
        Ok(self.query(sql, params, f)?.into_iter().next())
    }

    /// The first row, mapped; an error when there is none.
    pub fn query_one<T, F>(&self, sql: &str, params: &[P], f: F) -> Result<T>
    where
        F: FnMut(&Row) -> Result<T>,
    {
        self.query_opt(sql, params, f)?.ok_or_else(|| Error::Other(format!("no row: {sql}")))
    }
}

// === impl Row ===

impl Row<'_, '_> {
    pub fn i64(&self, i: usize) -> Result<i64> {
        match self {
            Row::Lite(r) => Ok(r.get(i)?),
            Row::Pg(r) => Ok(r.try_get(i)?),
        }
    }

    pub fn opt_i64(&self, i: usize) -> Result<Option<i64>> {
        match self {
            Row::Lite(r) => Ok(r.get(i)?),
            Row::Pg(r) => Ok(r.try_get(i)?),
        }
    }

    pub fn f64(&self, i: usize) -> Result<f64> {
        match self {
            Row::Lite(r) => Ok(r.get(i)?),
            Row::Pg(r) => Ok(r.try_get(i)?),
        }
    }

    /// A text column, borrowed from the row.
    pub fn str(&self, i: usize) -> Result<&str> {
        match self {
            Row::Lite(r) => Ok(r.get_ref(i)?.as_str().map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e)))?),
            Row::Pg(r) => Ok(r.try_get(i)?),
        }
    }

    pub fn opt_str(&self, i: usize) -> Result<Option<&str>> {
        match self {
            Row::Lite(r) => Ok(r.get_ref(i)?.as_str_or_null().map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e)))?),
            Row::Pg(r) => Ok(r.try_get(i)?),
        }
    }

    /// A BLOB (SQLite) or BYTEA (PostgreSQL) column, borrowed from the row.
    pub fn bytes(&self, i: usize) -> Result<&[u8]> {
        match self {
            Row::Lite(r) => Ok(r.get_ref(i)?.as_blob().map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Blob, Box::new(e)))?),
            Row::Pg(r) => Ok(r.try_get(i)?),
        }
    }

    pub fn string(&self, i: usize) -> Result<String> {
        self.str(i).map(str::to_string)
    }

    pub fn opt_string(&self, i: usize) -> Result<Option<String>> {
        self.opt_str(i).map(|s| s.map(str::to_string))
    }
}

// === impl Reader ===

impl Reader {
    /// A read connection to `at`, without migrating or writing. SQLite: read-only; PostgreSQL:
    /// an ordinary connection (the statements run are reads).
    pub fn open(at: &Location) -> Result<Reader, super::StoreError> {
        match at {
            Location::Dir(d) => Ok(Reader::Lite(super::open_read_only(d)?)),
            Location::Postgres(url) => {
                let pg = PgConn::connect(url).map_err(|e| super::StoreError::Sqlite(format!("connecting to {}: {e}", redact(url))))?;
                Ok(Reader::Pg(Box::new(RefCell::new(pg))))
            }
        }
    }

    pub fn conn(&self) -> Conn<'_> {
        match self {
            Reader::Lite(c) => Conn::Lite(c),
            Reader::Pg(pg) => Conn::Pg(pg),
        }
    }

    /// Starts a read transaction that sees one snapshot until the reader is dropped (counts,
    /// ranges and rows agree while a daemon keeps writing).
    pub fn begin_snapshot(&self) -> Result<()> {
        match self {
            Reader::Lite(c) => Ok(c.execute_batch("BEGIN DEFERRED")?),
            Reader::Pg(pg) => Ok(pg.borrow_mut().client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?),
        }
    }
}

#[cfg(test)]
mod tests;
