//! The structured log: significant events go to the `events` table as well
//! as to `tracing` (stderr, journald under systemd).

use rusqlite::params;
use serde::Serialize;

use super::{Result, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub id: i64,
    pub at: String,
    pub level: String,
    pub component: String,
    pub message: String,
    pub details: Option<serde_json::Value>,
}

impl Store {
    /// Record an event and mirror it to `tracing`.
    pub fn event(
        &mut self,
        level: Level,
        component: &str,
        message: &str,
        details: Option<serde_json::Value>,
    ) -> Result<i64> {
        match level {
            Level::Error => tracing::error!(component, details = ?details, "{message}"),
            Level::Warn => tracing::warn!(component, details = ?details, "{message}"),
            Level::Info => tracing::info!(component, details = ?details, "{message}"),
            Level::Debug => tracing::debug!(component, details = ?details, "{message}"),
        }
        let details = details.map(|d| d.to_string());
        let err = self.sql_err();
        self.write(|tx| {
            tx.execute(
                "INSERT INTO events (level, component, message, details) VALUES (?1, ?2, ?3, ?4)",
                params![level.as_str(), component, message, details],
            )
            .map_err(&err)?;
            Ok(tx.last_insert_rowid())
        })
    }

    /// The newest `limit` events, newest first.
    pub fn recent_events(&self, limit: usize) -> Result<Vec<Event>> {
        let mut stmt = self
            .conn()
            .prepare(
                "SELECT id, at, level, component, message, details FROM events ORDER BY id DESC LIMIT ?1",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([limit as i64], event_row)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }
}

/// One `events` row (id, at, level, component, message, details) as an [`Event`].
pub(super) fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    let details: Option<String> = r.get(5)?;
    Ok(Event {
        id: r.get(0)?,
        at: r.get(1)?,
        level: r.get(2)?,
        component: r.get(3)?,
        message: r.get(4)?,
        details: details.and_then(|d| serde_json::from_str(&d).ok()),
    })
}
