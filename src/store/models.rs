//! The `models` table: base models installed in the data dir.

use rusqlite::params;
use serde::Serialize;

use super::{Result, Store};

#[derive(Debug, Clone, Serialize)]
pub struct ModelRow {
    pub id: i64,
    pub name: String,
    pub path: String,
    pub sha256: String,
    pub bytes: i64,
    pub arch: Option<String>,
    pub imported_at: String,
}

impl Store {
    /// Record an installed model; a second record of the same path updates it in place.
    pub fn record_model(
        &mut self,
        name: &str,
        path: &str,
        sha256: &str,
        bytes: u64,
        arch: Option<&str>,
    ) -> Result<i64> {
        let err = self.sql_err();
        self.write(|tx| {
            tx.query_row(
                "INSERT INTO models (name, path, sha256, bytes, arch) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(path) DO UPDATE SET name = excluded.name, sha256 = excluded.sha256,
                   bytes = excluded.bytes, arch = excluded.arch
                 RETURNING id",
                params![name, path, sha256, bytes as i64, arch],
                |r| r.get(0),
            )
            .map_err(&err)
        })
    }

    /// Every recorded model, oldest first.
    pub fn models(&self) -> Result<Vec<ModelRow>> {
        let mut stmt = self
            .conn()
            .prepare("SELECT id, name, path, sha256, bytes, arch, imported_at FROM models ORDER BY id")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(ModelRow {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    path: r.get(2)?,
                    sha256: r.get(3)?,
                    bytes: r.get(4)?,
                    arch: r.get(5)?,
                    imported_at: r.get(6)?,
                })
            })
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_the_same_path_twice_keeps_one_row() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("w.db")).unwrap();
        let a = store.record_model("m", "/d/models/m.gguf", "aa", 10, Some("llama")).unwrap();
        let b = store.record_model("m", "/d/models/m.gguf", "bb", 11, Some("llama")).unwrap();
        assert_eq!(a, b);
        let rows = store.models().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].sha256.as_str(), rows[0].bytes), ("bb", 11));
    }
}
