-- Schema version 1 of the Hush reference server, SQLite.
--
-- User ids are UTF-8 text (compared byte for byte); keys, certificates,
-- prekeys and envelopes are BLOBs in the SDK's own encodings; times are Unix
-- seconds. Removing an account or a device removes what belongs to it
-- through the foreign keys (`PRAGMA foreign_keys = ON` on every connection).

CREATE TABLE accounts (
    user_id     TEXT    NOT NULL PRIMARY KEY,
    identity    BLOB    NOT NULL,
    -- The id the next linked device gets: device ids are never reused.
    next_device INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE devices (
    user_id            TEXT    NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
    device_id          INTEGER NOT NULL,
    auth_key           BLOB    NOT NULL,
    certificate        BLOB,
    signed_prekey      BLOB,
    last_resort_prekey BLOB,
    push_token         TEXT,
    created_at         INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id)
) STRICT, WITHOUT ROWID;

CREATE TABLE link_permissions (
    token      BLOB    NOT NULL PRIMARY KEY,
    user_id    TEXT    NOT NULL REFERENCES accounts (user_id) ON DELETE CASCADE,
    expires_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE INDEX link_permissions_user ON link_permissions (user_id);

CREATE TABLE one_time_prekeys (
    user_id    TEXT    NOT NULL,
    device_id  INTEGER NOT NULL,
    prekey_id  INTEGER NOT NULL,
    public_key BLOB    NOT NULL,
    PRIMARY KEY (user_id, device_id, prekey_id),
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
) STRICT, WITHOUT ROWID;

-- AUTOINCREMENT: a sequence number is never handed out twice, so a reader
-- paging with `seq > after` never skips an envelope.
CREATE TABLE queue (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    envelope_id      BLOB    NOT NULL UNIQUE,
    recipient_user   TEXT    NOT NULL,
    recipient_device INTEGER NOT NULL,
    sender_user      TEXT    NOT NULL,
    sender_device    INTEGER NOT NULL,
    server_time      INTEGER NOT NULL,
    envelope         BLOB    NOT NULL,
    FOREIGN KEY (recipient_user, recipient_device)
        REFERENCES devices (user_id, device_id) ON DELETE CASCADE
) STRICT;

CREATE INDEX queue_recipient ON queue (recipient_user, recipient_device, seq);
CREATE INDEX queue_server_time ON queue (server_time);

-- Kept when the uploading device is removed (its messages may still refer to
-- the blob); deleted with the account or by age.
CREATE TABLE blobs (
    blob_id      BLOB    NOT NULL PRIMARY KEY,
    owner_user   TEXT    NOT NULL,
    owner_device INTEGER NOT NULL,
    size         INTEGER NOT NULL,
    created_at   INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE INDEX blobs_owner ON blobs (owner_user);
CREATE INDEX blobs_created_at ON blobs (created_at);
