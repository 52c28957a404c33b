-- batchkit install script, part 20: the durable capture queue (tables only; the
-- functions that write and read it are in 21_capture.sql and the C shim).
--
-- Design (see README "Internals" and src/shim/queue/queue.c):
--   * one queue row = one CHUNK: up to batchkit.chunk_records records captured by
--     one statement for one sink, packed in a compact binary form with a header
--     describing how to decode them (so ALTER TABLE while rows wait is safe);
--   * the queue is partitioned into rotating SEGMENTS; writers insert into the
--     current one; the flush worker deletes chunks once the sink acknowledged
--     them and TRUNCATEs a segment that is no longer current and is empty, so
--     storage returns to empty after a drain (no vacuum needed to reclaim it);
--   * chunk ids come from a sequence; consumption is by deletion, never by a
--     "last id" cursor, so a lower id that commits late is never skipped.

CREATE SEQUENCE batchkit.chunk_id_seq AS bigint CACHE 1;

-- A chunk's type: stored exactly like bytea (the writers and the decoder see the
-- same bytes), but its text form, which pg_dump writes, renders the records by
-- type name and value text, and reads them back in the restored database: the
-- binary form holds type OIDs that mean nothing there (src/shim/queue/chunk_io.c).
CREATE TYPE batchkit.chunk;
CREATE FUNCTION batchkit.chunk_in(cstring) RETURNS batchkit.chunk
    AS 'MODULE_PATHNAME', 'batchkit_chunk_in' LANGUAGE C STABLE STRICT;
CREATE FUNCTION batchkit.chunk_out(batchkit.chunk) RETURNS cstring
    AS 'MODULE_PATHNAME', 'batchkit_chunk_out' LANGUAGE C STABLE STRICT;
CREATE TYPE batchkit.chunk (
    INPUT = batchkit.chunk_in, OUTPUT = batchkit.chunk_out,
    INTERNALLENGTH = VARIABLE, ALIGNMENT = int4, STORAGE = extended);
COMMENT ON TYPE batchkit.chunk IS
    'Captured records of batchkit''s queue (binary; text form for dump and restore)';

CREATE TABLE batchkit.queue (
    segment      smallint NOT NULL,
    chunk_id     bigint NOT NULL,
    sink_id      integer NOT NULL,
    source       oid,               -- captured table; NULL for enqueue()
    nrecords     integer NOT NULL,
    nbytes       integer NOT NULL,  -- encoded payload size
    txid         xid8 NOT NULL,     -- writer's transaction
    captured_at  timestamptz NOT NULL,
    done_records integer NOT NULL DEFAULT 0, -- records already acknowledged (a batch may end mid-chunk)
    payload      batchkit.chunk NOT NULL
) PARTITION BY LIST (segment);

CREATE TABLE batchkit.queue_0 PARTITION OF batchkit.queue FOR VALUES IN (0);
CREATE TABLE batchkit.queue_1 PARTITION OF batchkit.queue FOR VALUES IN (1);
CREATE TABLE batchkit.queue_2 PARTITION OF batchkit.queue FOR VALUES IN (2);
CREATE INDEX ON batchkit.queue (sink_id, chunk_id);
-- Chunks are written once and deleted once. Compress them with lz4 when the
-- server has it (it halves or better the WAL and TOAST the writer pays for, at a
-- fraction of the cost of writing those bytes); pglz is too slow for the writer's
-- path, so without lz4 they are stored out of line uncompressed.
DO $bk$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['batchkit.queue', 'batchkit.queue_0', 'batchkit.queue_1', 'batchkit.queue_2'] LOOP
        BEGIN
            EXECUTE format('ALTER TABLE %s ALTER COLUMN payload SET COMPRESSION lz4', t);
        EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
            EXECUTE format('ALTER TABLE %s ALTER COLUMN payload SET STORAGE EXTERNAL', t);
        END;
    END LOOP;
END
$bk$;

-- Which segment writers use now; rotated by the flush worker.
CREATE TABLE batchkit.queue_state (
    singleton        boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    current_segment  smallint NOT NULL DEFAULT 0 CHECK (current_segment BETWEEN 0 AND 2),
    rotated_at       timestamptz NOT NULL DEFAULT now()
);
INSERT INTO batchkit.queue_state DEFAULT VALUES;

-- Batches claimed but not yet acknowledged: replayed, with the same sequence
-- number, after a crash. batch_seq grows by one per batch and sink.
CREATE TABLE batchkit.inflight (
    sink_id      integer NOT NULL,
    batch_seq    bigint NOT NULL,
    chunk_ids    bigint[] NOT NULL,          -- in chunk_id order
    chunk_starts integer[] NOT NULL,         -- first record index taken from each chunk
    last_end     integer,                    -- end (exclusive) in the last chunk; NULL: all of it
    nrecords     integer NOT NULL,
    claimed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sink_id, batch_seq)
);

-- Per-sink delivery sequence (durable across restarts).
CREATE TABLE batchkit.sink_progress (
    sink_id        integer PRIMARY KEY REFERENCES batchkit.sink ON DELETE CASCADE,
    last_batch_seq bigint NOT NULL DEFAULT 0,
    acked_records  bigint NOT NULL DEFAULT 0,
    acked_at       timestamptz
);

-- Columns of one table by attribute number, written by name in a dump and read
-- back by name, as regclass is for a table (src/shim/capture/column_list.c): pg_dump
-- renumbers the columns that follow a dropped one.
CREATE TYPE batchkit.column_list;
CREATE FUNCTION batchkit.column_list_in(cstring) RETURNS batchkit.column_list
    AS 'MODULE_PATHNAME', 'batchkit_column_list_in' LANGUAGE C STABLE STRICT;
CREATE FUNCTION batchkit.column_list_out(batchkit.column_list) RETURNS cstring
    AS 'MODULE_PATHNAME', 'batchkit_column_list_out' LANGUAGE C STABLE STRICT;
CREATE TYPE batchkit.column_list (
    INPUT = batchkit.column_list_in, OUTPUT = batchkit.column_list_out,
    INTERNALLENGTH = VARIABLE, ALIGNMENT = int4, STORAGE = plain);
CREATE FUNCTION batchkit._column_list(source regclass, attnums smallint[])
    RETURNS batchkit.column_list
    AS 'MODULE_PATHNAME', 'batchkit_column_list_make' LANGUAGE C IMMUTABLE STRICT;
CREATE FUNCTION batchkit._column_list_attnums(batchkit.column_list) RETURNS smallint[]
    AS 'MODULE_PATHNAME', 'batchkit_column_list_attnums' LANGUAGE C IMMUTABLE STRICT;

-- What is captured: one row per (source table, sink).
CREATE TABLE batchkit.capture (
    capture_id      integer GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    source          regclass NOT NULL,
    sink_id         integer NOT NULL REFERENCES batchkit.sink,
    events          text[] NOT NULL,
    key_columns     text[] NOT NULL,
    columns         text[],          -- NULL: every column
    include_before  boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- what the capture trigger uses (key_columns/columns are the names given to
    -- capture()); NULL key_attnums: the trigger's arguments say (0.1.0 captures)
    key_attnums     batchkit.column_list,
    column_attnums  batchkit.column_list,   -- NULL: every column
    UNIQUE (source, sink_id)
);

REVOKE ALL ON batchkit.queue, batchkit.queue_0, batchkit.queue_1, batchkit.queue_2,
    batchkit.queue_state, batchkit.inflight, batchkit.sink_progress, batchkit.capture,
    batchkit.chunk_id_seq FROM PUBLIC;

-- pg_dump keeps (extension configuration tables): the captures and their id
-- sequence; the queue's segments, in the chunks' text form, so rows waiting at
-- dump time are delivered after a restore; the chunk id sequence, from which
-- every message's seq (chunk_id * 100000 + index) and idempotency key come, so
-- rows captured after a restore never repeat one of before the dump.
-- Not kept: queue_state (one row, inserted above), inflight (the chunks of a
-- batch in flight are simply claimed again) and sink_progress (a Redis sink
-- numbers its batches above the fence its data carries, src/shim/flush/flush_worker.c).
SELECT pg_catalog.pg_extension_config_dump('batchkit.capture', '');
SELECT pg_catalog.pg_extension_config_dump('batchkit.capture_capture_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('batchkit.queue_0', '');
SELECT pg_catalog.pg_extension_config_dump('batchkit.queue_1', '');
SELECT pg_catalog.pg_extension_config_dump('batchkit.queue_2', '');
SELECT pg_catalog.pg_extension_config_dump('batchkit.chunk_id_seq', '');
