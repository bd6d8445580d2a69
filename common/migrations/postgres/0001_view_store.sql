-- The view store of DESIGN.md §6 on PostgreSQL (applied by `lambda store init` and on open; versioned by sqlx).
-- dims and metrics hold the same JSON text as the SQLite store: dimension values `["view",null]` and metric
-- values `[312,12345670000]` (counts, sums in micro-units; 128-bit integers written exactly). Keys use
-- dims_hash = sha256(dims) instead of dims itself: a btree entry holds at most about 2.7 kB, and a
-- dimension value can be longer (a URL, a user agent).

CREATE TABLE IF NOT EXISTS speed_rows (
    view TEXT COLLATE "C" NOT NULL,
    granularity TEXT COLLATE "C" NOT NULL,
    bucket_start BIGINT NOT NULL,
    dims TEXT NOT NULL,
    dims_hash BYTEA NOT NULL,
    kafka_partition INTEGER NOT NULL,
    segment_start BIGINT NOT NULL,
    upto_offset BIGINT NOT NULL,
    metrics TEXT NOT NULL,
    PRIMARY KEY (view, granularity, bucket_start, dims_hash, kafka_partition, segment_start)
);
CREATE INDEX IF NOT EXISTS speed_rows_by_segment ON speed_rows (kafka_partition, segment_start);

CREATE TABLE IF NOT EXISTS batch_rows (
    generation BIGINT NOT NULL,
    view TEXT COLLATE "C" NOT NULL,
    granularity TEXT COLLATE "C" NOT NULL,
    bucket_start BIGINT NOT NULL,
    dims TEXT NOT NULL,
    dims_hash BYTEA NOT NULL,
    metrics TEXT NOT NULL,
    PRIMARY KEY (generation, view, granularity, bucket_start, dims_hash)
);

CREATE TABLE IF NOT EXISTS seals (
    topic TEXT NOT NULL,
    kafka_partition INTEGER NOT NULL,
    start_offset BIGINT NOT NULL,
    end_offset BIGINT NOT NULL,
    sealed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, kafka_partition, start_offset)
);

CREATE TABLE IF NOT EXISTS manifests (
    generation BIGINT PRIMARY KEY,
    body JSONB NOT NULL,
    published_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Leases expire by the server's clock, so processes on hosts with skewed clocks agree.
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    token BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO counters (name, value) VALUES ('generation', 0) ON CONFLICT DO NOTHING;

CREATE TABLE IF NOT EXISTS published_cutoffs (
    kafka_partition INTEGER PRIMARY KEY,
    cutoff BIGINT NOT NULL
);
