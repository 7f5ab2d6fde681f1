//! The database schema: numbered migrations applied in order by
//! [`Db::open`](super::Db::open) (`PRAGMA user_version` says how many ran).

/// The migrations, in order. Never edit one that has shipped; add another.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE jobs (
    id            BLOB PRIMARY KEY,
    name          TEXT NOT NULL,
    module        BLOB NOT NULL,
    params        BLOB NOT NULL,
    spec          BLOB NOT NULL,
    state         TEXT NOT NULL,
    chunks_total  INTEGER NOT NULL,
    created_ms    INTEGER NOT NULL,
    finished_ms   INTEGER,
    result        BLOB,
    error         TEXT
);
CREATE TABLE chunks (
    job_id      BLOB NOT NULL,
    idx         INTEGER NOT NULL,
    input       BLOB NOT NULL,
    input_size  INTEGER NOT NULL,
    input_data  BLOB,
    state       TEXT NOT NULL,
    outcome     BLOB,
    output      BLOB,
    output_data BLOB,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;
CREATE TABLE replicas (
    job_id      BLOB NOT NULL,
    chunk       INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    peer        TEXT NOT NULL,
    state       TEXT NOT NULL,
    issued_ms   INTEGER NOT NULL,
    outcome     BLOB,
    output      BLOB,
    output_data BLOB,
    fuel        INTEGER,
    PRIMARY KEY (job_id, chunk, attempt)
) WITHOUT ROWID;
CREATE TABLE reputation (
    peer         TEXT PRIMARY KEY,
    agreed       INTEGER NOT NULL,
    consecutive  INTEGER NOT NULL,
    disagreed    INTEGER NOT NULL,
    errors       INTEGER NOT NULL,
    timeouts     INTEGER NOT NULL
);
CREATE TABLE outbox (
    job_id      BLOB NOT NULL,
    chunk       INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    submitter   TEXT NOT NULL,
    result      BLOB NOT NULL,
    created_ms  INTEGER NOT NULL,
    PRIMARY KEY (job_id, chunk, attempt)
) WITHOUT ROWID;
"#,
    r#"
-- Adaptive replication and signed results (protocol 2).
ALTER TABLE chunks ADD COLUMN solo_peer TEXT;
ALTER TABLE replicas ADD COLUMN signature BLOB;
ALTER TABLE reputation ADD COLUMN caught INTEGER NOT NULL DEFAULT 0;
"#,
    r#"
-- Protocol 3: the outbox is keyed by submitter too (two submitters may pick the same
-- job id; one must never overwrite or cancel the other's results). Results signed
-- under protocol 2 cannot be delivered to a protocol-3 submitter: dropped.
DROP TABLE outbox;
CREATE TABLE outbox (
    submitter   TEXT NOT NULL,
    job_id      BLOB NOT NULL,
    chunk       INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    result      BLOB NOT NULL,
    created_ms  INTEGER NOT NULL,
    PRIMARY KEY (submitter, job_id, chunk, attempt)
) WITHOUT ROWID;
-- Withdrawals per peer (a budget; heavy withdrawers lose standing).
ALTER TABLE reputation ADD COLUMN withdrawn INTEGER NOT NULL DEFAULT 0;
"#,
    r#"
-- Outbox quotas and expiry (protocol 4): each row's size (the encoded result plus a
-- large output's blob), the blob a large output lives in (so the blob cache pins
-- it without decoding every result), and an index for expiry by age. Rows written
-- before are filled in by `Db::open` (outbox::backfill).
ALTER TABLE outbox ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN output_blob BLOB;
CREATE INDEX outbox_created ON outbox (created_ms);
-- Covering indexes: usage per submitter and the pinned blobs are read without
-- touching the results themselves (up to 4 MiB each).
CREATE INDEX outbox_usage ON outbox (submitter, bytes);
CREATE INDEX outbox_blobs ON outbox (output_blob) WHERE output_blob IS NOT NULL;
"#,
];
