-- A "tricky" PostgreSQL database for exact round-trip tests.
-- Needs the roles vya_app_owner and vya_app_reader (created by the test fixture).
-- Run with psql -v ON_ERROR_STOP=1 in the database to fill.

SET client_min_messages = warning;

CREATE EXTENSION IF NOT EXISTS plpgsql;

-- ------------------------------------------------------------ schemas, types
CREATE SCHEMA "other schema" AUTHORIZATION vya_app_owner;
COMMENT ON SCHEMA "other schema" IS 'a schema with a space; ünïcödé 🐘';

CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'ünï 🐘');
CREATE TYPE complex_t AS (r double precision, i double precision, label text);
CREATE DOMAIN positive_int AS integer CHECK (VALUE > 0);
CREATE DOMAIN "other schema".email AS text CHECK (VALUE ~ '@');
CREATE TYPE floatrange AS RANGE (subtype = float8, subtype_diff = float8mi);

-- ------------------------------------------------------------ every common column type
CREATE TABLE all_types (
    id            integer PRIMARY KEY,
    c_int2        smallint,
    c_int4        integer,
    c_int8        bigint,
    c_numeric     numeric(60, 30),
    c_numeric_any numeric,
    c_float4      real,
    c_float8      double precision,
    c_money       money,
    c_text        text,
    c_varchar     varchar(50),
    c_char        char(10),
    c_bytea       bytea,
    c_bool        boolean,
    c_date        date,
    c_time        time,
    c_timetz      timetz,
    c_timestamp   timestamp(6),
    c_timestamptz timestamptz,
    c_interval    interval,
    c_uuid        uuid,
    c_json        json,
    c_jsonb       jsonb,
    c_xml         xml,
    c_inet        inet,
    c_cidr        cidr,
    c_macaddr     macaddr,
    c_int_array   integer[],
    c_text_array  text[][],
    c_int4range   int4range,
    c_tstzrange   tstzrange,
    c_floatrange  floatrange,
    c_mood        mood,
    c_complex     complex_t,
    c_positive    positive_int,
    c_tsvector    tsvector,
    c_tsquery     tsquery,
    c_point       point,
    c_line        line,
    c_lseg        lseg,
    c_box         box,
    c_path        path,
    c_polygon     polygon,
    c_circle      circle,
    c_bit         bit(8),
    c_varbit      bit varying(20),
    c_oid         oid
);
COMMENT ON TABLE all_types IS 'every common column type';
COMMENT ON COLUMN all_types.c_bytea IS 'all 256 byte values';

INSERT INTO all_types VALUES (
    1, -32768, -2147483648, -9223372036854775808,
    123456789012345678901234567890.123456789012345678901234567890,
    '0.000000000000000000000000000000000000000000000000000000000001',
    3.14159274, 2.718281828459045, '-92233720368547758.08',
    E'tab\there, newline\nhere, backslash \\ quote '' and a NUL-free "string"; ünïcödé 🐘🎉 𝄞',
    'varchar ✓', 'char',
    (SELECT decode(string_agg(lpad(to_hex(i), 2, '0'), '' ORDER BY i), 'hex') FROM generate_series(0, 255) i),
    true, '2024-02-29', '23:59:59.999999', '12:34:56.789+05:45',
    '2024-12-31 23:59:59.123456', '2024-06-30 12:00:00.654321+02',
    '1 year 2 mons -3 days +04:05:06.789',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
    '{"a": [1, 2.50, "x"], "b": {"c": null}, "emoji": "🐘"}',
    '{"a": [1, 2.50, "x"], "b": {"c": null}, "emoji": "🐘"}',
    '<root a="1"><child>ünï &amp; 🐘</child></root>',
    '192.168.1.5/24', '10.0.0.0/8', '08:00:2b:01:02:03',
    '{1,NULL,3}', '{{"a b","c,d"},{"e\"f",NULL}}',
    '[1,10)', '["2024-01-01 00:00:00+00","2024-12-31 00:00:00+00")', '[1.5,2.5]',
    'ünï 🐘', ROW(1.5, -2.25, 'z'), 42,
    to_tsvector('english', 'The quick brown foxes jumped'), 'fox & dog',
    '(1.5,2.5)', '{1,-1,0}', '[(0,0),(1,1)]', '((0,0),(2,2))', '[(0,0),(1,1),(2,0)]',
    '((0,0),(1,1),(1,0))', '<(1,1),5>', B'10101010', B'1101', 12345
), (
    2, 0, 0, 0, 'NaN', '-0.5', 'NaN', 'Infinity', 0, '', '', '', '\x', false,
    'infinity', '00:00', '00:00+00', '-infinity', 'infinity', '0',
    '00000000-0000-0000-0000-000000000000', 'null', '[]', '<a/>', '::1', '::/0',
    'ff:ff:ff:ff:ff:ff', '{}', '{}', 'empty', 'empty', 'empty', 'sad', ROW(NULL, NULL, NULL),
    1, '', '', '(0,0)', '{0,1,0}', '[(0,0),(0,0)]', '((0,0),(0,0))', '((0,0))', '((0,0))',
    '<(0,0),0>', B'00000000', B'', 0
), (
    3, 32767, 2147483647, 9223372036854775807, '-1e-30', '1e100', '-Infinity', '-Infinity',
    '92233720368547758.07', NULL, NULL, NULL, NULL, NULL, '4713-01-01 BC', '24:00:00', NULL,
    '294276-12-31 23:59:59.999999', '1999-12-31 23:59:59.999999-12', '-178000000 years',
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
), (
    4, NULL, NULL, NULL, NULL, NULL, 1.17549435e-38, 2.2250738585072014e-308, NULL,
    E'line1\r\nline2\\.\n\\.\nafter', NULL, NULL, '\x5c2e0a', NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
);

-- ------------------------------------------------------------ identifiers and the db's name
CREATE TABLE "other schema"."Table ""With"" Quotes & ünï 🐘" (
    "Id Column" integer GENERATED BY DEFAULT AS IDENTITY (START WITH 100 INCREMENT BY 7) PRIMARY KEY,
    "Ünïcödé Column" text NOT NULL,
    "e-mail" "other schema".email,
    "select" text  -- a reserved word
);
COMMENT ON COLUMN "other schema"."Table ""With"" Quotes & ünï 🐘"."Ünïcödé Column" IS 'quoted ''comment''';
INSERT INTO "other schema"."Table ""With"" Quotes & ünï 🐘" ("Ünïcödé Column", "e-mail", "select")
SELECT 'row ' || i || ' 🐘', 'u' || i || '@example.org', 'sel' FROM generate_series(1, 25) i;
-- The row that proves a rename never rewrites data: it contains the database's own name.
INSERT INTO "other schema"."Table ""With"" Quotes & ünï 🐘" ("Ünïcödé Column")
VALUES (current_database()), ('CREATE DATABASE ' || quote_ident(current_database()) || ';'),
       ('\connect ' || current_database());

-- ------------------------------------------------------------ sequences and identities
CREATE SEQUENCE counter_seq START 1000 INCREMENT 5 MAXVALUE 999999 CYCLE;
SELECT setval('counter_seq', 4242, true);
CREATE SEQUENCE never_used_seq;
CREATE SEQUENCE set_not_called_seq;
SELECT setval('set_not_called_seq', 77, false);

CREATE TABLE orders (
    id        bigserial PRIMARY KEY,
    ident     integer GENERATED ALWAYS AS IDENTITY (START WITH 500),
    qty       integer NOT NULL CHECK (qty > 0),
    price     numeric(12, 2) NOT NULL,
    total     numeric(14, 2) GENERATED ALWAYS AS (qty * price) STORED,
    note      text DEFAULT 'none',
    mood      mood DEFAULT 'ok',
    created   timestamptz NOT NULL DEFAULT '2024-01-01 00:00:00+00'
);
INSERT INTO orders (qty, price, note) SELECT i, i * 1.25, 'order ' || i FROM generate_series(1, 300) i;
SELECT setval('orders_id_seq', 9000);
CREATE INDEX orders_note_idx ON orders (lower(note)) WHERE qty > 10;
CREATE UNIQUE INDEX orders_ident_idx ON orders (ident);

CREATE TABLE order_lines (
    order_id bigint NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    line_no  integer NOT NULL,
    item     text COLLATE "C",
    PRIMARY KEY (order_id, line_no)
);
INSERT INTO order_lines SELECT o, l, 'item ' || o || '/' || l FROM generate_series(1, 50) o, generate_series(1, 3) l;

-- ------------------------------------------------------------ partitioned table
CREATE TABLE measurements (
    id       integer NOT NULL,
    taken_on date NOT NULL,
    value    double precision
) PARTITION BY RANGE (taken_on);
CREATE TABLE measurements_2023 PARTITION OF measurements FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
CREATE TABLE measurements_2024 PARTITION OF measurements FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE measurements_default PARTITION OF measurements DEFAULT;
INSERT INTO measurements
SELECT i, date '2023-06-01' + i, i / 7.0 FROM generate_series(1, 600) i;

-- ------------------------------------------------------------ routines, triggers, views
CREATE FUNCTION add_numbers(a integer, b integer) RETURNS integer
    LANGUAGE sql IMMUTABLE STRICT AS $$ SELECT a + b $$;

CREATE FUNCTION "other schema"."weird func ""x"""(t text) RETURNS text
    LANGUAGE plpgsql AS $body$
BEGIN
    -- A body with things a naive filter would touch:
    -- SET transaction_timeout = 0;
    RETURN t || ' $$ ; \. COPY x FROM stdin;';
END
$body$;

CREATE FUNCTION touch_note() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.note := coalesce(NEW.note, '') || ' (touched)';
    RETURN NEW;
END
$$;
CREATE TRIGGER orders_touch BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION touch_note();

CREATE TABLE audit_log (id serial PRIMARY KEY, msg text);
CREATE PROCEDURE log_message(m text) LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit_log (msg) VALUES (m);
END
$$;
CALL log_message('hello from a procedure 🐘');
CALL log_message(E'second\nline');

CREATE VIEW order_summary AS
    SELECT mood, count(*) AS n, sum(total) AS total FROM orders GROUP BY mood;
CREATE MATERIALIZED VIEW order_totals AS
    SELECT id, total FROM orders WHERE id <= 100 WITH DATA;
CREATE UNIQUE INDEX order_totals_id ON order_totals (id);
CREATE MATERIALIZED VIEW empty_matview AS SELECT 1 AS x WITH NO DATA;
COMMENT ON VIEW order_summary IS 'view comment';
COMMENT ON FUNCTION add_numbers(integer, integer) IS 'adds';

-- ------------------------------------------------------------ large objects
SELECT lo_from_bytea(0, '\x000102fffe'::bytea);
SELECT lo_from_bytea(0, convert_to(repeat('large object ünï 🐘 ', 5000), 'UTF8'));
SELECT lo_from_bytea(0, ''::bytea);
CREATE TABLE documents (id serial PRIMARY KEY, name text, content oid);
INSERT INTO documents (name, content)
SELECT 'doc ' || n, lo_from_bytea(0, convert_to('document ' || n, 'UTF8')) FROM generate_series(1, 3) n;

-- ------------------------------------------------------------ ownership and grants
CREATE TABLE owned_by_app (id integer PRIMARY KEY, v text);
INSERT INTO owned_by_app VALUES (1, 'owned');
ALTER TABLE owned_by_app OWNER TO vya_app_owner;
ALTER TABLE "other schema"."Table ""With"" Quotes & ünï 🐘" OWNER TO vya_app_owner;
GRANT SELECT ON all_types, orders TO vya_app_reader;
GRANT SELECT (id, qty), UPDATE (note) ON orders TO vya_app_owner;
GRANT USAGE ON SCHEMA "other schema" TO vya_app_reader;
GRANT EXECUTE ON FUNCTION add_numbers(integer, integer) TO vya_app_reader;
REVOKE EXECUTE ON FUNCTION add_numbers(integer, integer) FROM PUBLIC;
ALTER DEFAULT PRIVILEGES IN SCHEMA "other schema" GRANT SELECT ON TABLES TO vya_app_reader;
DO $$ BEGIN
    EXECUTE format('GRANT SELECT ON LARGE OBJECT %s TO vya_app_reader', (SELECT min(oid) FROM pg_largeobject_metadata));
END $$;

-- ------------------------------------------------------------ misc
CREATE TABLE with_policy (id integer PRIMARY KEY, owner_name text);
ALTER TABLE with_policy ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_rows ON with_policy USING (owner_name = current_user);
INSERT INTO with_policy VALUES (1, 'vya_app_reader');

CREATE TABLE unlogged_and_toasted (id integer PRIMARY KEY, big text);
INSERT INTO unlogged_and_toasted SELECT i, repeat(md5(i::text), 2000) FROM generate_series(1, 20) i;

CREATE TABLE empty_table (id integer);
