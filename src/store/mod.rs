//! The SQLite record of everything: files seen, documents, chunks (FTS5),
//! training runs and their steps, adapters, evaluations, questions, answers,
//! reviews and events.
//!
//! One process writes (the service, or a one-shot command holding the data
//! dir's lock); any number read. Writes go through [`Store::write`], which
//! opens `BEGIN IMMEDIATE` so that a writer never fails half-way on a lock
//! upgrade; readers keep their transactions short. WAL with
//! `synchronous=FULL`: an appliance on USB-class storage must survive power
//! cuts without losing a committed row.
//!
//! Typed queries live beside this file, one file per area. This module is
//! the only place in the crate that writes SQL or names `rusqlite`: the
//! connection and the transaction stay private here, and every other module
//! reads and writes through typed `Store` methods.

pub mod adapters;
mod answers;
pub mod evals;
mod events;
pub mod ingest;
mod models;
pub mod queue;
pub mod reviews;
mod service;
mod status;
mod train;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use rusqlite_migration::{Migrations, M};

pub use events::{Event, Level};
pub use models::ModelRow;
pub use queue::{LastRound, NewMaterial};
pub use status::{StatusReport, TableCount};
pub use train::{
    DataSnapshot, DocSource, NewAdapter, QaSource, ReviewSource, RunRow, StepRow, TrainingSources,
};

/// Busy timeout for every connection. Readers in WAL mode never block the
/// writer; this only covers checkpoints and a second writer's brief overlap.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Versioned migrations. Append only: a shipped migration is never edited.
fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(include_str!("schema.sql")),
        M::up(include_str!("evals_placement.sql")),
        M::up(include_str!("reviews_loop.sql")),
    ])
}

/// The latest schema version this binary knows.
pub fn schema_version_latest() -> usize {
    // One migration per entry above; user_version counts them.
    3
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error("database {path} failed its integrity check: {detail}. Restore it from a backup (`VACUUM INTO` copies), or move it aside to start an empty one")]
    Corrupt { path: PathBuf, detail: String },
    #[error("database {path}: migration failed: {source}")]
    Migration { path: PathBuf, source: rusqlite_migration::Error },
    #[error(
        "database {path} has schema version {found}, newer than this warsha knows ({known}); upgrade warsha"
    )]
    TooNew { path: PathBuf, found: usize, known: usize },
    #[error("cannot create {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The per-connection settings [`Store::open`] applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `wal` for a read-write store.
    pub journal_mode: String,
    /// SQLite's code: 2 is FULL.
    pub synchronous: i64,
    pub foreign_keys: bool,
}

/// An open database. `Store` is `Send`, not `Sync`: give each thread its own.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    read_only: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).field("read_only", &self.read_only).finish()
    }
}

impl Store {
    /// The database file inside a data dir.
    pub fn db_path(data_dir: &Path) -> PathBuf {
        data_dir.join("warsha.db")
    }

    /// Open (creating if needed) read-write, check integrity, migrate.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|source| StoreError::Io { path: parent.to_path_buf(), source })?;
        }
        let sq = |source| StoreError::Sqlite { path: path.to_path_buf(), source };
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sq)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(sq)?;
        // A file that is not a database at all fails on the first read: map
        // it to Corrupt rather than a raw SQLite code.
        let mode: String =
            conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(|e| corrupt_or(path, e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "database not in WAL mode");
        }
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
            .map_err(|e| corrupt_or(path, e))?;
        quick_check(&conn, path)?;
        let found = user_version(&conn, path)?;
        if found > schema_version_latest() {
            return Err(StoreError::TooNew {
                path: path.to_path_buf(),
                found,
                known: schema_version_latest(),
            });
        }
        migrations()
            .to_latest(&mut conn)
            .map_err(|source| StoreError::Migration { path: path.to_path_buf(), source })?;
        Ok(Self { conn, path: path.to_path_buf(), read_only: false })
    }

    /// Open an existing database read-only (the TUI, status of a running service).
    pub fn open_read_only(path: &Path) -> Result<Self> {
        let sq = |source| StoreError::Sqlite { path: path.to_path_buf(), source };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sq)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(sq)?;
        conn.execute_batch("PRAGMA foreign_keys = ON;").map_err(|e| corrupt_or(path, e))?;
        quick_check(&conn, path)?;
        Ok(Self { conn, path: path.to_path_buf(), read_only: true })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The connection, for reads. Keep read transactions short.
    fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Run `f` inside `BEGIN IMMEDIATE … COMMIT`; roll back on error.
    fn write<T, E>(&mut self, f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|source| StoreError::Sqlite { path: path.clone(), source })?;
        let out = f(&tx)?;
        tx.commit().map_err(|source| StoreError::Sqlite { path, source })?;
        Ok(out)
    }

    /// Wrap a rusqlite error with this database's path.
    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite { path: self.path.clone(), source }
    }

    /// An owned error mapper, for use inside [`Store::write`] closures.
    fn sql_err(&self) -> impl Fn(rusqlite::Error) -> StoreError + use<> {
        let path = self.path.clone();
        move |source| StoreError::Sqlite { path: path.clone(), source }
    }

    /// The durability settings this connection runs with.
    pub fn settings(&self) -> Result<Settings> {
        let c = &self.conn;
        let q = |sql: &str| {
            c.query_row(sql, [], |r| r.get::<_, rusqlite::types::Value>(0)).map_err(|e| self.err(e))
        };
        let text = |v| match v {
            rusqlite::types::Value::Text(t) => t,
            other => format!("{other:?}"),
        };
        let int = |v| match v {
            rusqlite::types::Value::Integer(i) => i,
            _ => -1,
        };
        Ok(Settings {
            journal_mode: text(q("PRAGMA journal_mode")?),
            synchronous: int(q("PRAGMA synchronous")?),
            foreign_keys: int(q("PRAGMA foreign_keys")?) == 1,
        })
    }

    pub fn schema_version(&self) -> Result<usize> {
        user_version(&self.conn, &self.path)
    }

    /// A consistent copy of the database (safe while the service writes).
    pub fn backup_to(&self, dest: &Path) -> Result<()> {
        let d = dest.to_string_lossy().to_string();
        self.conn.execute("VACUUM INTO ?1", [d]).map_err(|e| self.err(e))?;
        Ok(())
    }
}

fn user_version(conn: &Connection, path: &Path) -> Result<usize> {
    let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| corrupt_or(path, e))?;
    Ok(usize::try_from(v).unwrap_or(0))
}

fn quick_check(conn: &Connection, path: &Path) -> Result<()> {
    let mut stmt = conn.prepare("PRAGMA quick_check").map_err(|e| corrupt_or(path, e))?;
    let rows: Vec<String> =
        stmt.query_map([], |r| r.get(0)).and_then(|it| it.collect()).map_err(|e| corrupt_or(path, e))?;
    if rows.len() == 1 && rows[0] == "ok" {
        Ok(())
    } else {
        Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: rows.into_iter().take(5).collect::<Vec<_>>().join("; "),
        })
    }
}

/// SQLITE_NOTADB / SQLITE_CORRUPT become `Corrupt`; anything else stays a plain error.
fn corrupt_or(path: &Path, e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e {
        if matches!(f.code, rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) {
            return StoreError::Corrupt { path: path.to_path_buf(), detail: e.to_string() };
        }
    }
    StoreError::Sqlite { path: path.to_path_buf(), source: e }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid() {
        migrations().validate().unwrap();
        assert_eq!(schema_version_latest(), 3);
    }

    #[test]
    fn bundled_sqlite_is_recent_enough() {
        // The WAL-reset bug is fixed in 3.51.3.
        let v = rusqlite::version_number();
        assert!(v >= 3_051_003, "bundled SQLite {} too old", rusqlite::version());
    }
}
