-- PQXDH (server protocol version 2): each device's ML-KEM-1024 last-resort
-- prekey (replaced like the classical one) and its PQ one-time prekeys, each
-- stored in the SDK's `SignedPqPreKey` encoding (1,645 bytes). Both go with
-- their device (foreign keys). New tables rather than a new column of
-- `devices`, so that every statement is safe to re-run.
CREATE TABLE IF NOT EXISTS pq_last_resort_prekeys (
    user_id   VARBINARY(255) NOT NULL,
    device_id INT UNSIGNED   NOT NULL,
    prekey    BLOB           NOT NULL,
    PRIMARY KEY (user_id, device_id),
    CONSTRAINT pq_last_resort_prekeys_device FOREIGN KEY (user_id, device_id)
        REFERENCES devices (user_id, device_id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS pq_one_time_prekeys (
    user_id   VARBINARY(255) NOT NULL,
    device_id INT UNSIGNED   NOT NULL,
    prekey_id INT UNSIGNED   NOT NULL,
    prekey    BLOB           NOT NULL,
    PRIMARY KEY (user_id, device_id, prekey_id),
    CONSTRAINT pq_one_time_prekeys_device FOREIGN KEY (user_id, device_id)
        REFERENCES devices (user_id, device_id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
