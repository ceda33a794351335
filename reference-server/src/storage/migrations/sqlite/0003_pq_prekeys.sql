-- PQXDH (server protocol version 2): each device's ML-KEM-1024 last-resort
-- prekey (replaced like the classical one) and its PQ one-time prekeys, each
-- stored in the SDK's `SignedPqPreKey` encoding (1,645 bytes). Both go with
-- their device (foreign keys).
CREATE TABLE pq_last_resort_prekeys (
    user_id   TEXT    NOT NULL,
    device_id INTEGER NOT NULL,
    prekey    BLOB    NOT NULL,
    PRIMARY KEY (user_id, device_id),
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
) STRICT, WITHOUT ROWID;

CREATE TABLE pq_one_time_prekeys (
    user_id   TEXT    NOT NULL,
    device_id INTEGER NOT NULL,
    prekey_id INTEGER NOT NULL,
    prekey    BLOB    NOT NULL,
    PRIMARY KEY (user_id, device_id, prekey_id),
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
) STRICT, WITHOUT ROWID;
