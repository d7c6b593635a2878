//! What `warsha status` reports from the database alone.

use serde::Serialize;

use super::{Event, Result, Store};

/// Tables whose row counts the status shows, in display order.
const COUNTED: [&str; 13] = [
    "files",
    "documents",
    "chunks",
    "qa_pairs",
    "models",
    "runs",
    "run_steps",
    "adapters",
    "evals",
    "questions",
    "answers",
    "reviews",
    "events",
];

#[derive(Debug, Clone, Serialize)]
pub struct TableCount {
    pub table: &'static str,
    pub rows: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ActiveAdapter {
    pub id: i64,
    pub path: String,
    pub promoted_at: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastRun {
    pub id: i64,
    pub status: String,
    pub steps_done: i64,
    pub max_steps: i64,
    pub started_at: String,
    pub ended_at: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub database: String,
    pub schema_version: usize,
    pub sqlite_version: &'static str,
    pub counts: Vec<TableCount>,
    pub files_by_state: Vec<(String, i64)>,
    pub active_adapter: Option<ActiveAdapter>,
    pub last_run: Option<LastRun>,
    pub last_events: Vec<Event>,
}

impl Store {
    pub fn status_report(&self, events: usize) -> Result<StatusReport> {
        let c = self.conn();
        let mut counts = Vec::with_capacity(COUNTED.len());
        for table in COUNTED {
            // Table names come from the constant above, never from input.
            let rows: i64 = c
                .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
                .map_err(|e| self.err(e))?;
            counts.push(TableCount { table, rows });
        }
        let mut stmt = c
            .prepare("SELECT state, count(*) FROM files GROUP BY state ORDER BY state")
            .map_err(|e| self.err(e))?;
        let files_by_state = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.err(e))?;
        let active_adapter = c
            .query_row("SELECT id, path, promoted_at FROM adapters WHERE state = 'active'", [], |r| {
                Ok(ActiveAdapter { id: r.get(0)?, path: r.get(1)?, promoted_at: r.get(2)? })
            })
            .map(Some)
            .or_else(none_if_empty)
            .map_err(|e| self.err(e))?;
        let last_run = c
            .query_row(
                "SELECT id, status, steps_done, max_steps, started_at, ended_at FROM runs ORDER BY id DESC LIMIT 1",
                [],
                |r| {
                    Ok(LastRun {
                        id: r.get(0)?,
                        status: r.get(1)?,
                        steps_done: r.get(2)?,
                        max_steps: r.get(3)?,
                        started_at: r.get(4)?,
                        ended_at: r.get(5)?,
                    })
                },
            )
            .map(Some)
            .or_else(none_if_empty)
            .map_err(|e| self.err(e))?;
        Ok(StatusReport {
            database: self.path().display().to_string(),
            schema_version: self.schema_version()?,
            sqlite_version: rusqlite::version(),
            counts,
            files_by_state,
            active_adapter,
            last_run,
            last_events: self.recent_events(events)?,
        })
    }
}

/// `query_row` returning no row is "none", not an error.
pub fn none_if_empty<T>(e: rusqlite::Error) -> Result<Option<T>, rusqlite::Error> {
    match e {
        rusqlite::Error::QueryReturnedNoRows => Ok(None),
        e => Err(e),
    }
}
