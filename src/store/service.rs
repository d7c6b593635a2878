//! What the service's `events` stream reads: events after a given id.

use super::{Event, Result, Store};

impl Store {
    /// The newest event's id (0 when there is none).
    pub fn last_event_id(&self) -> Result<i64> {
        self.conn()
            .query_row("SELECT coalesce(max(id), 0) FROM events", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// Events with an id above `after`, oldest first, at most `limit`.
    pub fn events_after(&self, after: i64, limit: usize) -> Result<Vec<Event>> {
        let mut stmt = self
            .conn()
            .prepare(
                "SELECT id, at, level, component, message, details FROM events WHERE id > ?1 ORDER BY id LIMIT ?2",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([after, limit as i64], super::events::event_row)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }
}

impl Store {
    /// Delete events older than `days` days (`[retention] events_days`). Returns how many.
    pub fn prune_events(&mut self, days: u32) -> Result<usize> {
        let err = self.sql_err();
        let modifier = format!("-{days} days");
        self.write(|tx| {
            tx.execute("DELETE FROM events WHERE at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?1)", [modifier])
                .map_err(&err)
        })
    }
}
