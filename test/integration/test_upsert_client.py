"""The Python client helper of batch_upsert (clients/python/batchkit_upsert.py):
its encodings round-trip every awkward value exactly as psycopg2's own
parameter adaptation does, and upsert() has batch_upsert's semantics."""
import datetime
import decimal
import io
import json
import pathlib
import sys

import psycopg2
import psycopg2.errors
import psycopg2.extras
import pytest

from conftest import connect

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "clients" / "python"))
import batchkit_upsert  # noqa: E402

AWKWARD_TEXT = ["plain", "tab\there", "new\nline", "cr\rlf\r\n", "back\\slash\\", "\\N", "\\.",
                "", " spaced ", "quote\"d", "it's", "comma, (paren) {brace}", "NULL", "null",
                "%s %(x)s", "ünïcødé ☃ 😀", "\x01\x7f", "a\\tb", None]

TYPED_DDL = """
CREATE TABLE {name} (
    id bigint PRIMARY KEY,
    t text,
    n numeric,
    f float8,
    b boolean,
    ts timestamptz,
    d date,
    raw bytea,
    doc jsonb,
    ints int[],
    texts text[])
"""


def typed_rows():
    tz = datetime.timezone(datetime.timedelta(hours=2))
    rows = []
    for i, t in enumerate(AWKWARD_TEXT):
        rows.append((
            i, t,
            decimal.Decimal("12345678901234567890.000000001") if i % 3 == 0 else None,
            [1.5, float("inf"), float("-inf"), 1e300, -0.0][i % 5],
            [True, False, None][i % 3],
            datetime.datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=tz),
            datetime.date(1999, 12, 31),
            bytes([0, 1, 92, 9, 10, 255]) if i % 2 else None,
            {"k": t, "n": [1, None, {"x": "\\\t\""}]} if t is not None else None,
            [1, None, 3] if i % 2 else [],
            [t, None, "x,y", "{z}"] if t is not None else None))
    return rows


def reference(cur, table, rows):
    """psycopg2's own adaptation of the same values, one INSERT per row."""
    cols = len(rows[0])
    for r in rows:
        cur.execute(f"INSERT INTO {table} VALUES ({', '.join(['%s'] * cols)})",
                    [psycopg2.extras.Json(v) if isinstance(v, dict) else v for v in r])


def contents(cur, table):
    cur.execute(f"SELECT * FROM {table} ORDER BY 1")
    return cur.fetchall()


@pytest.mark.parametrize("block_rows", [3, 2000])
def test_copy_text_round_trips_every_value(db, block_rows, monkeypatch):
    monkeypatch.setattr(batchkit_upsert, "BLOCK_ROWS", block_rows)
    cur = db.cursor()
    cur.execute("DROP TABLE IF EXISTS client_ref, client_copy")
    cur.execute(TYPED_DDL.format(name="client_ref"))
    cur.execute(TYPED_DDL.format(name="client_copy"))
    rows = typed_rows()
    reference(cur, "client_ref", rows)
    cur.copy_expert("COPY client_copy FROM STDIN", io.StringIO(batchkit_upsert.copy_text(rows)))
    assert contents(cur, "client_copy") == contents(cur, "client_ref")
    # NaN does not compare equal to itself in Python: check it on its own
    cur.execute("TRUNCATE client_copy")
    cur.copy_expert("COPY client_copy (id, f) FROM STDIN",
                    io.StringIO(batchkit_upsert.copy_text([(1, float("nan"))])))
    cur.execute("SELECT f = 'NaN'::float8 FROM client_copy")
    assert cur.fetchone() == (True,)


class _EqualsEverything(str):
    """A value whose == claims equality with anything, None included."""

    def __eq__(self, other):
        return True

    __hash__ = str.__hash__


@pytest.mark.parametrize("block_rows", [2, 2000])
def test_copy_text_nulls_in_every_kind_of_column(db, block_rows, monkeypatch):
    """NULLs are located without a Python loop per value (list.index): in int
    columns (written without escaping), text columns, all-NULL columns, and
    next to a value that claims to equal None (which must stay a value)."""
    monkeypatch.setattr(batchkit_upsert, "BLOCK_ROWS", block_rows)
    cur = db.cursor()
    cur.execute("DROP TABLE IF EXISTS client_nulls, client_nulls_ref")
    ddl = "CREATE TABLE {} (id bigint PRIMARY KEY, i bigint, t text, none text, odd text, b boolean)"
    cur.execute(ddl.format("client_nulls"))
    cur.execute(ddl.format("client_nulls_ref"))
    rows = [(k, [None, -7, 2 ** 62, 0][k % 4], [None, "x\ty", "", "\\N"][k % 3], None,
             [None, _EqualsEverything("odd"), "plain"][k % 3], [True, None, False][k % 3])
            for k in range(12)]
    reference(cur, "client_nulls_ref", [r[:4] + (None if r[4] is None else str(r[4]),) + r[5:]
                                        for r in rows])
    cur.copy_expert("COPY client_nulls FROM STDIN", io.StringIO(batchkit_upsert.copy_text(rows)))
    assert contents(cur, "client_nulls") == contents(cur, "client_nulls_ref")
    cur.execute("SELECT count(*) FILTER (WHERE i IS NULL), count(*) FILTER (WHERE odd = 'odd'),"
                " count(*) FILTER (WHERE none IS NULL) FROM client_nulls")
    assert cur.fetchone() == (3, 4, 12)


def test_upsert_round_trips_every_value_and_counts(services, dbname, monkeypatch):
    conn = connect(services, dbname, autocommit=False)
    cur = conn.cursor()
    cur.execute(TYPED_DDL.format(name="client_up_ref"))
    cur.execute(TYPED_DDL.format(name="client_up"))
    rows = typed_rows()
    reference(cur, "client_up_ref", rows)
    cols = ["id", "t", "n", "f", "b", "ts", "d", "raw", "doc", "ints", "texts"]
    # small blocks: the COPY stream is encoded in several pieces
    monkeypatch.setattr(batchkit_upsert, "BLOCK_ROWS", 4)
    assert batchkit_upsert.upsert(cur, "client_up", cols, rows) == (len(rows), 0)
    conn.commit()
    assert contents(cur, "client_up") == contents(cur, "client_up_ref")
    # the staging table is gone
    cur.execute("SELECT count(*) FROM pg_class WHERE relname LIKE 'batchkit_staging%%'")
    assert cur.fetchone() == (0,)
    conn.close()


def test_json_arrays_recipe_of_the_docs(db):
    """docs/upsert.md: json.dumps(rows) (arrays) converted on the server."""
    cur = db.cursor()
    cur.execute("CREATE TABLE client_ja (id bigint PRIMARY KEY, t text, b boolean, x float8,"
                " j jsonb, d text DEFAULT 'dflt')")
    cur.execute("CREATE TABLE client_ja_ref (LIKE client_ja INCLUDING ALL)")
    cur.execute("CREATE TYPE client_ja_in AS (id bigint, t text, b boolean, x float8, j jsonb)")
    rows = [(i, t, [True, False, None][i % 3], [1.5, -0.25, None, 1e300][i % 4],
             {"k": t, "n": [1, None]} if i % 2 else None)
            for i, t in enumerate(AWKWARD_TEXT)]
    rows += [(0, "dup: the last occurrence wins", None, None, None)]
    for r in rows:
        cur.execute("INSERT INTO client_ja_ref (id, t, b, x, j) VALUES (%s, %s, %s, %s, %s)"
                    " ON CONFLICT (id) DO UPDATE SET t = excluded.t, b = excluded.b,"
                    " x = excluded.x, j = excluded.j",
                    [psycopg2.extras.Json(v) if isinstance(v, dict) else v for v in r])
    cur.execute("""
        SELECT * FROM batchkit.batch_upsert('client_ja', ARRAY(
            SELECT ROW((e->>0)::bigint, e->>1, (e->>2)::boolean, (e->>3)::float8,
                       nullif(e->4, 'null'))::client_ja_in
              FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS a(e, o) ORDER BY o))""",
                (json.dumps(rows),))
    assert cur.fetchone() == (len(AWKWARD_TEXT), 0)
    cur.execute("SELECT id, t, b, x, j, d FROM client_ja ORDER BY id")
    got = cur.fetchall()
    cur.execute("SELECT id, t, b, x, j, d FROM client_ja_ref ORDER BY id")
    assert got == cur.fetchall()


def test_upsert_semantics(services, dbname):
    conn = connect(services, dbname, autocommit=False)
    cur = conn.cursor()
    cur.execute('CREATE SCHEMA "Client S"')
    cur.execute('CREATE TABLE "Client S"."Odd ""T""" ("the id" int PRIMARY KEY, "v a l" text,'
                ' other text DEFAULT \'dflt\', u int UNIQUE)')
    t = '"Client S"."Odd ""T"""'
    cur.execute(f"INSERT INTO {t} VALUES (1, 'old', 'kept', 100)")
    # duplicates: the last occurrence wins; missing columns keep their defaults
    got = batchkit_upsert.upsert(cur, t, ["the id", "v a l"],
                                 [(1, "first"), (2, "new"), (1, "second")])
    assert got == (1, 1)
    cur.execute(f'SELECT * FROM {t} ORDER BY "the id"')
    assert cur.fetchall() == [(1, "second", "kept", 100), (2, "new", "dflt", None)]
    # update_columns=[]: insert or skip; another unique key as conflict target
    assert batchkit_upsert.upsert(cur, t, ["the id", "v a l"], [(1, "no"), (3, "yes")],
                                  update_columns=[]) == (1, 0)
    assert batchkit_upsert.upsert(cur, t, ["u", "v a l", "the id"], [(100, "by u", 1)],
                                  conflict_columns=["u"], update_columns=["v a l"]) == (0, 1)
    # two calls in one transaction, and an empty batch
    assert batchkit_upsert.upsert(cur, t, ["the id"], []) == (0, 0)
    conn.commit()
    cur.execute(f'SELECT "the id", "v a l" FROM {t} ORDER BY 1')
    assert cur.fetchall() == [(1, "by u"), (2, "new"), (3, "yes")]
    conn.close()


def test_upsert_rejects_bad_input_and_changes_nothing(services, dbname):
    conn = connect(services, dbname, autocommit=False)
    cur = conn.cursor()
    cur.execute("CREATE TABLE client_bad (id int PRIMARY KEY, v text)")
    cur.execute("INSERT INTO client_bad VALUES (1, 'one')")
    conn.commit()
    with pytest.raises(ValueError, match="NUL"):
        batchkit_upsert.upsert(cur, "client_bad", ["id", "v"], [(2, "nul\x00inside")])
    with pytest.raises(ValueError, match="NUL"):
        batchkit_upsert.copy_text([(1, None), (2, "a\x00")])
    with pytest.raises(ValueError, match="lengths"):
        batchkit_upsert.upsert(cur, "client_bad", ["id", "v"], [(2, "x"), (3,)])
    conn.rollback()
    # a NULL key: COPY refuses it (the staging key is NOT NULL); nothing changes
    with pytest.raises(psycopg2.errors.NotNullViolation):
        batchkit_upsert.upsert(cur, "client_bad", ["id", "v"], [(2, "two"), (None, "null key")])
    conn.rollback()
    # a value of the wrong type: the server's error, naming the column
    with pytest.raises(psycopg2.errors.InvalidTextRepresentation, match="integer"):
        batchkit_upsert.upsert(cur, "client_bad", ["id", "v"], [("two", "x")])
    conn.rollback()
    # a column the target does not have
    with pytest.raises(psycopg2.errors.UndefinedColumn, match="nope"):
        batchkit_upsert.upsert(cur, "client_bad", ["id", "nope"], [(2, "x")])
    conn.rollback()
    cur.execute("SELECT * FROM client_bad")
    assert cur.fetchall() == [(1, "one")]
    conn.close()
    auto = connect(services, dbname)
    with pytest.raises(ValueError, match="autocommit"):
        batchkit_upsert.upsert(auto.cursor(), "client_bad", ["id"], [(5,)])
    auto.close()
