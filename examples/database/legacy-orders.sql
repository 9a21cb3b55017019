-- The tables the database examples read and write, for PostgreSQL (psql -f) and, below, for
-- MySQL/MariaDB (mysql < …). Try them against the local servers:
--   psql -h 127.0.0.1 -U root test -f examples/database/legacy-orders.sql
--   mysql -h 127.0.0.1 -u root test < examples/database/legacy-orders-mysql.sql

-- A legacy ERP's orders table, read by examples/routes/legacy-orders-db-to-http.yaml.
CREATE TABLE IF NOT EXISTS erp_orders (
    order_no    BIGINT PRIMARY KEY,
    customer_no TEXT NOT NULL,
    amount      NUMERIC(12,2) NOT NULL,
    currency    CHAR(3) NOT NULL DEFAULT 'EUR',
    changed_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- The watermark's order, as an index: each poll is one index range scan.
CREATE INDEX IF NOT EXISTS erp_orders_changed ON erp_orders (changed_at, order_no);

INSERT INTO erp_orders (order_no, customer_no, amount) VALUES
    (4711, 'C-100', 129.95), (4712, 'C-101', 12.50), (4713, 'C-100', 1999.00)
ON CONFLICT DO NOTHING;
