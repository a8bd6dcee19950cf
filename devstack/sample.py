"""A small but varied sample database: several schemas, types, sequences and a few thousand rows."""

SAMPLE_SQL = r"""
CREATE SCHEMA sales;
CREATE SCHEMA inventory;
CREATE SCHEMA "Audit Log";
CREATE TYPE sales.order_status AS ENUM ('new', 'paid', 'shipped', 'cancelled');
CREATE DOMAIN inventory.sku AS text CHECK (VALUE ~ '^[A-Z]{3}-[0-9]{4}$');
CREATE SEQUENCE sales.invoice_no START 1000 INCREMENT 7;
CREATE TABLE sales.customers (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    email text UNIQUE,
    tags text[] DEFAULT '{}',
    profile jsonb,
    created_at timestamptz NOT NULL DEFAULT '2026-01-01 00:00:00+00'
);
CREATE TABLE sales.orders (
    id bigserial PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES sales.customers(id),
    status sales.order_status NOT NULL DEFAULT 'new',
    total numeric(12, 2) NOT NULL,
    invoice bigint DEFAULT nextval('sales.invoice_no'),
    placed_at timestamptz NOT NULL
);
CREATE INDEX orders_customer_idx ON sales.orders (customer_id);
CREATE TABLE inventory.items (
    sku inventory.sku PRIMARY KEY,
    description text,
    photo bytea,
    qty integer NOT NULL CHECK (qty >= 0)
);
CREATE TABLE "Audit Log"."Événements" (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    happened_at timestamptz NOT NULL,
    detail text
);
CREATE VIEW sales.big_orders AS SELECT * FROM sales.orders WHERE total > 500;
CREATE FUNCTION sales.touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.detail := coalesce(NEW.detail, 'touched'); RETURN NEW; END $$;
CREATE TRIGGER audit_touch BEFORE INSERT ON "Audit Log"."Événements" FOR EACH ROW EXECUTE FUNCTION sales.touch();
COMMENT ON TABLE sales.orders IS 'one row per order';

INSERT INTO sales.customers (name, email, tags, profile)
SELECT 'customer ' || g, 'c' || g || '@example.com', ARRAY['t' || (g % 5)], jsonb_build_object('n', g, 'vip', g % 17 = 0)
FROM generate_series(1, 1500) g;
INSERT INTO sales.orders (customer_id, status, total, placed_at)
SELECT 1 + (g % 1500), (ARRAY['new','paid','shipped','cancelled']::sales.order_status[])[1 + g % 4],
       round((g * 37 % 100000) / 100.0, 2), '2026-01-01'::timestamptz + g * interval '17 minutes'
FROM generate_series(1, 4000) g;
INSERT INTO inventory.items (sku, description, photo, qty)
SELECT 'ABC-' || lpad(g::text, 4, '0'), 'item ' || g, decode(md5(g::text), 'hex'), g % 50
FROM generate_series(1, 700) g;
INSERT INTO "Audit Log"."Événements" (happened_at, detail)
SELECT '2026-02-01'::timestamptz + g * interval '1 hour', CASE WHEN g % 3 = 0 THEN NULL ELSE 'event ' || g END
FROM generate_series(1, 300) g;
SELECT setval('sales.invoice_no', 5000);
"""

BACKUP_ROLE = "lifeboat_backup"
BACKUP_PASSWORD = "s3cret-Backup-pw!"

ROLE_SQL = f"""
CREATE ROLE {BACKUP_ROLE} LOGIN PASSWORD '{BACKUP_PASSWORD}' CREATEDB;
GRANT pg_read_all_data TO {BACKUP_ROLE};
"""


def create_sample(server: object, dbname: str = "shop") -> None:
    """Create the sample database (and the backup role, once) on a devstack PostgresServer."""
    psql = server.psql  # type: ignore[attr-defined]
    if psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{BACKUP_ROLE}'") != "1":
        psql(ROLE_SQL)
    psql(f"CREATE DATABASE {dbname} OWNER {BACKUP_ROLE}")
    psql(f"SET ROLE {BACKUP_ROLE};\n" + SAMPLE_SQL, dbname=dbname)
