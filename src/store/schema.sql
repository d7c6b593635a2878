-- warsha schema, version 1. Times are UTC ISO-8601 text; JSON columns hold
-- objects that scripts may read but the code never needs to query inside.

-- Every file seen in the drop folder (or given to `ingest PATH`), and the one
-- state it ended in. 'pending' rows are jobs: spooled, not yet finished.
CREATE TABLE files (
    id          INTEGER PRIMARY KEY,
    path        TEXT NOT NULL,              -- as seen (drop-relative for the drop folder)
    origin      TEXT NOT NULL CHECK (origin IN ('drop', 'path')),
    size        INTEGER NOT NULL,
    mtime_ns    INTEGER,
    sha256      TEXT,                       -- NULL until hashed
    state       TEXT NOT NULL CHECK (state IN ('pending', 'ingested', 'duplicate', 'rejected', 'ignored')),
    reason      TEXT,                       -- plain words for rejected/ignored/duplicate
    document_id INTEGER REFERENCES documents(id),
    moved_to    TEXT,                       -- where the original now lies in the drop tree
    closed_at   TEXT,                       -- nothing left to do (moved, or nothing to move); NULL: open job
    first_seen  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX files_state ON files(state);
CREATE INDEX files_sha ON files(sha256);
CREATE INDEX files_path ON files(path);
CREATE INDEX files_open ON files(id) WHERE closed_at IS NULL;

CREATE TABLE documents (
    id           INTEGER PRIMARY KEY,
    sha256       TEXT NOT NULL UNIQUE,
    name         TEXT NOT NULL,             -- original file name
    kind         TEXT NOT NULL,             -- txt, md, csv, jsonl, docx, pdf
    spool_path   TEXT NOT NULL,             -- relative to the data dir
    bytes        INTEGER NOT NULL,
    encoding     TEXT,
    lang         TEXT,                      -- ar, en, mixed
    dialect      TEXT,                      -- msa, egyptian, gulf, levantine, maghrebi
    arabic_share REAL,
    diacritized  INTEGER NOT NULL DEFAULT 0,
    text         TEXT NOT NULL,             -- train form of the whole text
    warnings     TEXT,                      -- JSON list: bad lines, replaced bytes, ...
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE chunks (
    id          INTEGER PRIMARY KEY,
    document_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    ord         INTEGER NOT NULL,
    heading     TEXT,
    text        TEXT NOT NULL,              -- train form
    search_text TEXT NOT NULL,              -- search form
    tokens      INTEGER NOT NULL,
    lang        TEXT,
    dialect     TEXT,
    UNIQUE (document_id, ord)
);
CREATE VIRTUAL TABLE chunks_fts USING fts5(
    search_text, content='chunks', content_rowid='id', tokenize='unicode61 remove_diacritics 0'
);
CREATE TRIGGER chunks_ai AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts(rowid, search_text) VALUES (new.id, new.search_text);
END;
CREATE TRIGGER chunks_ad AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, search_text) VALUES ('delete', old.id, old.search_text);
END;

-- Question–answer samples from CSV/JSONL sets (answers are training targets).
CREATE TABLE qa_pairs (
    id          INTEGER PRIMARY KEY,
    document_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    ord         INTEGER NOT NULL,
    system      TEXT,
    question    TEXT NOT NULL,
    answer      TEXT NOT NULL,
    UNIQUE (document_id, ord)
);

CREATE TABLE models (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    path        TEXT NOT NULL UNIQUE,
    sha256      TEXT NOT NULL,
    bytes       INTEGER NOT NULL,
    arch        TEXT,
    imported_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE runs (
    id             INTEGER PRIMARY KEY,
    status         TEXT NOT NULL CHECK (status IN ('running', 'paused', 'done', 'failed', 'interrupted')),
    base_model     TEXT NOT NULL,
    base_sha256    TEXT,
    config         TEXT NOT NULL,           -- JSON: LoRA, schedule, plan
    data_snapshot  TEXT NOT NULL,           -- JSON: document ids, qa ids, review ids
    steps_done     INTEGER NOT NULL DEFAULT 0,
    max_steps      INTEGER NOT NULL,
    checkpoint_dir TEXT,
    heldout_loss   REAL,
    adapter_id     INTEGER REFERENCES adapters(id),
    error          TEXT,
    started_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    ended_at       TEXT
);

CREATE TABLE run_steps (
    run_id       INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step         INTEGER NOT NULL,
    loss         REAL NOT NULL,             -- true per-token cross-entropy
    lr           REAL NOT NULL,
    grad_norm    REAL,
    tokens_per_s REAL,
    peak_mem_mib REAL,
    at           TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (run_id, step)
);

CREATE TABLE adapters (
    id            INTEGER PRIMARY KEY,
    run_id        INTEGER REFERENCES runs(id),
    parent_id     INTEGER REFERENCES adapters(id),
    state         TEXT NOT NULL CHECK (state IN ('candidate', 'active', 'previous', 'rejected', 'imported', 'retired')),
    path          TEXT NOT NULL,            -- relative to the data dir
    sha256        TEXT NOT NULL,
    bytes         INTEGER NOT NULL,
    base_sha256   TEXT,
    rank          INTEGER NOT NULL,
    alpha         REAL NOT NULL,
    targets       TEXT NOT NULL,            -- JSON list
    data_snapshot TEXT,                     -- JSON
    metrics       TEXT,                     -- JSON: the gate's figures
    reasons       TEXT,                     -- why rejected / promoted
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    promoted_at   TEXT
);
CREATE UNIQUE INDEX adapters_one_active ON adapters(state) WHERE state = 'active';

CREATE TABLE evals (
    id            INTEGER PRIMARY KEY,
    adapter_id    INTEGER REFERENCES adapters(id),   -- NULL: the bare base model
    base_sha256   TEXT,
    eval_set_hash TEXT NOT NULL,
    metrics       TEXT NOT NULL,            -- JSON
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE questions (
    id       INTEGER PRIMARY KEY,
    text     TEXT NOT NULL,
    origin   TEXT NOT NULL,                 -- tui, cli, demo, eval
    asked_by TEXT,
    asked_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE answers (
    id          INTEGER PRIMARY KEY,
    question_id INTEGER NOT NULL REFERENCES questions(id) ON DELETE CASCADE,
    adapter_id  INTEGER REFERENCES adapters(id),
    text        TEXT NOT NULL,
    sources     TEXT NOT NULL,              -- JSON list of {chunk_id, document_id, name}
    tokens      INTEGER,
    latency_ms  INTEGER,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE reviews (
    id          INTEGER PRIMARY KEY,
    answer_id   INTEGER NOT NULL REFERENCES answers(id) ON DELETE CASCADE,
    verdict     TEXT NOT NULL CHECK (verdict IN ('approved', 'corrected', 'rejected')),
    correction  TEXT,                       -- the right answer, a training target
    reviewer    TEXT,
    used_in_run INTEGER REFERENCES runs(id),
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE events (
    id        INTEGER PRIMARY KEY,
    at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    level     TEXT NOT NULL CHECK (level IN ('error', 'warn', 'info', 'debug')),
    component TEXT NOT NULL,
    message   TEXT NOT NULL,
    details   TEXT                          -- JSON
);
CREATE INDEX events_at ON events(at);
