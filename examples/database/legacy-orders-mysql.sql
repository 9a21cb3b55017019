-- The table examples/routes/webshop-orders-to-mysql.yaml writes, for MySQL/MariaDB:
--   mysql -h 127.0.0.1 -u root test < examples/database/legacy-orders-mysql.sql
CREATE TABLE IF NOT EXISTS shop_orders (
    order_id    VARCHAR(40) PRIMARY KEY,
    customer    VARCHAR(200) NOT NULL,
    total       DECIMAL(12,2) NOT NULL,
    lines_json  JSON NOT NULL,
    message_id  CHAR(36) NOT NULL,
    received_at DATETIME(6) NOT NULL
);

-- The stock table examples/routes/partner-sftp-stock-to-db.yaml upserts into.
CREATE TABLE IF NOT EXISTS stock (
    sku        VARCHAR(40)  NOT NULL,
    warehouse  VARCHAR(80)  NOT NULL,
    on_hand    INT          NOT NULL,
    file_name  VARCHAR(200) NOT NULL,
    PRIMARY KEY (sku, warehouse)
);
