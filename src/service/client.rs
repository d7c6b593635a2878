//! The client side of the socket, for the CLI and the TUI: connect when a
//! service answers, send one request, read its records.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::{json, Value};

use super::protocol::VERSION;
use crate::data_dir::DataDir;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("service socket {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("the service refused ({code}): {message}")]
    Refused { code: String, message: String },
    #[error("the service closed the connection")]
    Closed,
    #[error("the service sent a record that is not JSON: {0}")]
    Protocol(String),
}

pub struct Connection {
    path: String,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

/// Connect to the data dir's service. `None` when no service runs there
/// (no socket, or nobody listening on it); an error when one runs but
/// cannot be reached (permissions).
pub fn connect(data: &DataDir) -> Result<Option<Connection>, ClientError> {
    let path = data.socket();
    let shown = path.display().to_string();
    match UnixStream::connect(&path) {
        Ok(s) => {
            let w = s.try_clone().map_err(|source| ClientError::Io { path: shown.clone(), source })?;
            let _ = w.set_write_timeout(Some(Duration::from_secs(30)));
            Ok(Some(Connection { path: shown, reader: BufReader::new(s), writer: w, next_id: 1 }))
        }
        Err(e)
            if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) =>
        {
            Ok(None)
        }
        Err(source) => Err(ClientError::Io { path: shown, source }),
    }
}

impl Connection {
    /// Send `{"verb": .., args..}` with the version and a fresh id.
    pub fn send(&mut self, mut request: Value) -> Result<Value, ClientError> {
        let id = json!(self.next_id);
        self.next_id += 1;
        if let Some(o) = request.as_object_mut() {
            o.insert("v".into(), json!(VERSION));
            o.insert("id".into(), id.clone());
        }
        let mut line = request.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|source| ClientError::Io { path: self.path.clone(), source })?;
        Ok(id)
    }

    /// The next record; an error record becomes [`ClientError::Refused`].
    pub fn next_record(&mut self) -> Result<Value, ClientError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|source| ClientError::Io { path: self.path.clone(), source })?;
        if n == 0 {
            return Err(ClientError::Closed);
        }
        let v: Value = serde_json::from_str(&line).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if let Some(err) = v.get("error") {
            return Err(ClientError::Refused {
                code: err["code"].as_str().unwrap_or("error").to_string(),
                message: err["message"].as_str().unwrap_or("").to_string(),
            });
        }
        Ok(v)
    }

    /// One request answered by one record: its `result`.
    pub fn call(&mut self, request: Value) -> Result<Value, ClientError> {
        self.send(request)?;
        let v = self.next_record()?;
        Ok(v.get("result").cloned().unwrap_or(v))
    }
}
