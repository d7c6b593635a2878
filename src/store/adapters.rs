//! Typed queries over the `adapters` table: the registry of every adapter
//! with its lineage, size, hash, metrics and state.
//!
//! States: `candidate` (trained, not yet gated), `active` (used to answer;
//! at most one, enforced by a unique index), `previous` (was active; the
//! newest is where rollback goes), `rejected` (the gate or a rollback said
//! no; never becomes active), `imported` (brought in from elsewhere, not
//! yet promoted), `retired` (beyond retention; its files are gone).
//!
//! State switches that must not be seen half-done (promote, rollback,
//! retention) are single `Store` methods, each one `BEGIN IMMEDIATE`
//! transaction that reads the rows it decides on, so two writers can never
//! interleave a promotion. What they do not know is the file system: the
//! caller vets each row about to be retired (its directory) inside the
//! transaction, and removes directories only after the commit.

use rusqlite::{params, OptionalExtension, Row, Transaction};
use serde::{Deserialize, Serialize};

use super::{Result, Store, StoreError};

pub const STATES: [&str; 6] = ["candidate", "active", "previous", "rejected", "imported", "retired"];

/// One registry row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterRow {
    pub id: i64,
    pub run_id: Option<i64>,
    pub parent_id: Option<i64>,
    pub state: String,
    /// Directory relative to the data dir, e.g. `adapters/run-7`.
    pub path: String,
    /// sha256 of `adapter_model.safetensors`.
    pub sha256: String,
    /// Bytes of the adapter directory's files.
    pub bytes: i64,
    pub base_sha256: Option<String>,
    pub rank: i64,
    pub alpha: f64,
    pub targets: Vec<String>,
    pub data_snapshot: Option<serde_json::Value>,
    pub metrics: Option<serde_json::Value>,
    pub reasons: Option<serde_json::Value>,
    pub created_at: String,
    pub promoted_at: Option<String>,
}

/// What a new row needs; the rest is filled by the database.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewAdapter {
    pub run_id: Option<i64>,
    pub parent_id: Option<i64>,
    pub state: String,
    pub path: String,
    pub sha256: String,
    pub bytes: i64,
    pub base_sha256: Option<String>,
    pub rank: i64,
    pub alpha: f64,
    pub targets: Vec<String>,
    pub data_snapshot: Option<serde_json::Value>,
}

const COLUMNS: &str =
    "id, run_id, parent_id, state, path, sha256, bytes, base_sha256, rank, alpha, targets, \
                       data_snapshot, metrics, reasons, created_at, promoted_at";

fn json_col(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<serde_json::Value>> {
    let s: Option<String> = row.get(idx)?;
    Ok(s.and_then(|s| serde_json::from_str(&s).ok()))
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<AdapterRow> {
    let targets: String = row.get(10)?;
    Ok(AdapterRow {
        id: row.get(0)?,
        run_id: row.get(1)?,
        parent_id: row.get(2)?,
        state: row.get(3)?,
        path: row.get(4)?,
        sha256: row.get(5)?,
        bytes: row.get(6)?,
        base_sha256: row.get(7)?,
        rank: row.get(8)?,
        alpha: row.get(9)?,
        targets: serde_json::from_str(&targets).unwrap_or_default(),
        data_snapshot: json_col(row, 11)?,
        metrics: json_col(row, 12)?,
        reasons: json_col(row, 13)?,
        created_at: row.get(14)?,
        promoted_at: row.get(15)?,
    })
}

/// Insert a row inside a transaction; returns its id.
fn insert_tx(tx: &Transaction<'_>, a: &NewAdapter) -> rusqlite::Result<i64> {
    tx.execute(
        "INSERT INTO adapters (run_id, parent_id, state, path, sha256, bytes, base_sha256, rank, alpha, targets, \
         data_snapshot) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            a.run_id,
            a.parent_id,
            a.state,
            a.path,
            a.sha256,
            a.bytes,
            a.base_sha256,
            a.rank,
            a.alpha,
            serde_json::to_string(&a.targets).unwrap_or_else(|_| "[]".into()),
            a.data_snapshot.as_ref().map(|v| v.to_string()),
        ],
    )?;
    Ok(tx.last_insert_rowid())
}

/// One row inside a transaction.
fn get_tx(tx: &Transaction<'_>, id: i64) -> rusqlite::Result<Option<AdapterRow>> {
    tx.query_row(&format!("SELECT {COLUMNS} FROM adapters WHERE id = ?1"), [id], from_row).optional()
}

/// The active row inside a transaction.
fn active_tx(tx: &Transaction<'_>) -> rusqlite::Result<Option<AdapterRow>> {
    tx.query_row(&format!("SELECT {COLUMNS} FROM adapters WHERE state = 'active'"), [], from_row).optional()
}

/// The newest `previous` row (by promotion time, then id) inside a transaction.
fn newest_previous_tx(tx: &Transaction<'_>) -> rusqlite::Result<Option<AdapterRow>> {
    tx.query_row(
        &format!(
            "SELECT {COLUMNS} FROM adapters WHERE state = 'previous' \
             ORDER BY promoted_at DESC NULLS LAST, id DESC LIMIT 1"
        ),
        [],
        from_row,
    )
    .optional()
}

/// Set a row's state (and, when given, its reasons) inside a transaction.
fn set_state_tx(
    tx: &Transaction<'_>,
    id: i64,
    state: &str,
    reasons: Option<&serde_json::Value>,
) -> rusqlite::Result<()> {
    match reasons {
        Some(r) => tx.execute(
            "UPDATE adapters SET state = ?2, reasons = ?3 WHERE id = ?1",
            params![id, state, r.to_string()],
        )?,
        None => tx.execute("UPDATE adapters SET state = ?2 WHERE id = ?1", params![id, state])?,
    };
    Ok(())
}

/// Make `id` active: the current active row becomes `previous`, `id` becomes
/// `active` with `promoted_at` now. Run inside one transaction: readers see
/// either the old or the new active adapter, never none or two.
fn promote_tx(tx: &Transaction<'_>, id: i64, reasons: Option<&serde_json::Value>) -> rusqlite::Result<()> {
    tx.execute("UPDATE adapters SET state = 'previous' WHERE state = 'active' AND id != ?1", [id])?;
    tx.execute(
        "UPDATE adapters SET state = 'active', promoted_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), \
         reasons = COALESCE(?2, reasons) WHERE id = ?1",
        params![id, reasons.map(|r| r.to_string())],
    )?;
    Ok(())
}

/// Store the gate's figures on a row.
fn set_metrics_tx(tx: &Transaction<'_>, id: i64, metrics: &serde_json::Value) -> rusqlite::Result<()> {
    tx.execute("UPDATE adapters SET metrics = ?2 WHERE id = ?1", params![id, metrics.to_string()])?;
    Ok(())
}

/// Retire the retention victims inside a transaction, each vetted first.
fn retire_tx<E: SwitchError>(
    tx: &Transaction<'_>,
    keep: usize,
    vet: &impl Fn(&AdapterRow) -> Result<(), E>,
    err: &impl Fn(rusqlite::Error) -> StoreError,
) -> Result<Vec<AdapterRow>, E> {
    let victims = retention_victims_tx(tx, keep).map_err(err)?;
    for v in &victims {
        set_state_tx(tx, v.id, "retired", None).map_err(err)?;
        vet(v)?;
    }
    Ok(victims)
}

/// Rows that retention retires so that at most `keep` adapters keep their
/// files: the active row and the newest `previous` row always stay; the
/// rest, newest first, fill the remaining places.
fn retention_victims_tx(tx: &Transaction<'_>, keep: usize) -> rusqlite::Result<Vec<AdapterRow>> {
    let mut stmt = tx.prepare(&format!(
        "SELECT {COLUMNS} FROM adapters WHERE state != 'retired' ORDER BY created_at DESC, id DESC"
    ))?;
    let rows: Vec<AdapterRow> = stmt.query_map([], from_row)?.collect::<rusqlite::Result<_>>()?;
    let newest_prev = rows.iter().filter(|r| r.state == "previous").max_by(|a, b| {
        (a.promoted_at.as_deref().unwrap_or(""), a.id).cmp(&(b.promoted_at.as_deref().unwrap_or(""), b.id))
    });
    let protected: Vec<i64> =
        rows.iter().filter(|r| r.state == "active").chain(newest_prev).map(|r| r.id).collect();
    let mut places = keep.saturating_sub(protected.len());
    let mut victims = Vec::new();
    for r in rows {
        if protected.contains(&r.id) {
            continue;
        }
        if places > 0 {
            places -= 1;
        } else {
            victims.push(r);
        }
    }
    Ok(victims)
}

/// Why a state switch was refused; the registry turns it into its own error.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    NotFound(i64),
    /// The row's state forbids the switch (`why` says which rule).
    State {
        id: i64,
        state: String,
        why: String,
    },
    /// Rollback with no active adapter.
    NothingActive,
}

/// The rows a committed switch touched, as they are after it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transition {
    /// The adapter now answering (None: the bare base model).
    pub active: Option<AdapterRow>,
    /// The adapter that was active before, now `previous` (promote) or `rejected` (rollback).
    pub replaced: Option<AdapterRow>,
    /// Rows retention retired (read before the switch; their state is now `retired`).
    pub retired: Vec<AdapterRow>,
}

/// Errors a switch can end in: the caller's own type, built from the store's
/// error, a refusal, or what the caller's vetting of a retired row returned.
pub trait SwitchError: From<StoreError> + From<Refusal> {}
impl<E: From<StoreError> + From<Refusal>> SwitchError for E {}

impl Store {
    /// Make adapter `id` the active one: the current active adapter becomes
    /// `previous`; rejected and retired adapters are refused; an already
    /// active one is left as it is. Retention (at most `keep` rows keep their
    /// files) runs in the same transaction; `vet` sees each row it would
    /// retire and aborts the whole switch by returning an error.
    pub fn promote_adapter<E: SwitchError>(
        &mut self,
        id: i64,
        reasons: Option<&serde_json::Value>,
        keep: usize,
        vet: impl Fn(&AdapterRow) -> Result<(), E>,
    ) -> Result<Transition, E> {
        let err = self.sql_err();
        self.write(|tx| {
            let row = get_tx(tx, id).map_err(&err)?.ok_or(Refusal::NotFound(id))?;
            let refuse = |why: &str| Refusal::State { id, state: row.state.clone(), why: why.into() };
            match row.state.as_str() {
                "rejected" => return Err(refuse("a rejected adapter never becomes active").into()),
                "retired" => return Err(refuse("its files were deleted").into()),
                "active" => return Ok(Transition { active: Some(row), ..Default::default() }),
                _ => {}
            }
            let replaced = active_tx(tx).map_err(&err)?;
            promote_tx(tx, id, reasons).map_err(&err)?;
            let retired = retire_tx(tx, keep, &vet, &err)?;
            let active = get_tx(tx, id).map_err(&err)?;
            let replaced = match replaced {
                Some(r) => get_tx(tx, r.id).map_err(&err)?,
                None => None,
            };
            Ok(Transition { active, replaced, retired })
        })
    }

    /// Undo the last promotion: the active adapter becomes `rejected` with
    /// `reasons`, and the newest `previous` becomes active again (or none:
    /// the bare base model). Retention and `vet` as in [`Store::promote_adapter`].
    pub fn rollback_adapter<E: SwitchError>(
        &mut self,
        reasons: &serde_json::Value,
        keep: usize,
        vet: impl Fn(&AdapterRow) -> Result<(), E>,
    ) -> Result<Transition, E> {
        let err = self.sql_err();
        self.write(|tx| {
            let cur = active_tx(tx).map_err(&err)?.ok_or(Refusal::NothingActive)?;
            let prev = newest_previous_tx(tx).map_err(&err)?;
            set_state_tx(tx, cur.id, "rejected", Some(reasons)).map_err(&err)?;
            if let Some(p) = &prev {
                promote_tx(tx, p.id, None).map_err(&err)?;
            }
            let retired = retire_tx(tx, keep, &vet, &err)?;
            let active = match prev {
                Some(p) => get_tx(tx, p.id).map_err(&err)?,
                None => None,
            };
            let replaced = get_tx(tx, cur.id).map_err(&err)?;
            Ok(Transition { active, replaced, retired })
        })
    }

    /// Retire what lies beyond `keep` (its own transaction); returns the retired rows.
    pub fn retire_adapters<E: SwitchError>(
        &mut self,
        keep: usize,
        vet: impl Fn(&AdapterRow) -> Result<(), E>,
    ) -> Result<Vec<AdapterRow>, E> {
        let err = self.sql_err();
        self.write(|tx| retire_tx(tx, keep, &vet, &err))
    }

    /// Store the gate's figures on a row (its own transaction).
    pub fn set_adapter_metrics(&mut self, id: i64, metrics: &serde_json::Value) -> Result<()> {
        let err = self.sql_err();
        self.write(|tx| set_metrics_tx(tx, id, metrics).map_err(&err))
    }

    /// Every adapter, newest first.
    pub fn adapters(&self) -> Result<Vec<AdapterRow>> {
        let mut stmt = self
            .conn()
            .prepare(&format!("SELECT {COLUMNS} FROM adapters ORDER BY id DESC"))
            .map_err(|e| self.err(e))?;
        let rows = stmt.query_map([], from_row).and_then(|it| it.collect()).map_err(|e| self.err(e))?;
        Ok(rows)
    }

    pub fn adapter(&self, id: i64) -> Result<Option<AdapterRow>> {
        self.conn()
            .query_row(&format!("SELECT {COLUMNS} FROM adapters WHERE id = ?1"), [id], from_row)
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The adapter answering questions now; None = the bare base model.
    pub fn active_adapter(&self) -> Result<Option<AdapterRow>> {
        self.conn()
            .query_row(&format!("SELECT {COLUMNS} FROM adapters WHERE state = 'active'"), [], from_row)
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Insert a row (its own transaction); returns the id.
    pub fn insert_adapter(&mut self, a: &NewAdapter) -> Result<i64> {
        let err = self.sql_err();
        self.write(|tx| insert_tx(tx, a).map_err(&err))
    }

    /// Set one row's state and reasons (its own transaction).
    pub fn set_adapter_state(
        &mut self,
        id: i64,
        state: &str,
        reasons: Option<&serde_json::Value>,
    ) -> Result<()> {
        let err = self.sql_err();
        self.write(|tx| set_state_tx(tx, id, state, reasons).map_err(&err))
    }
}
