-- Schema version 1 of the Hush reference server, MySQL 8 and MariaDB 10.6+.
--
-- MySQL commits DDL implicitly, so a migration cannot be rolled back: every
-- statement is written to be re-run safely (IF NOT EXISTS, indexes declared
-- inside CREATE TABLE). The runner drops whole-line `--` comments and splits
-- the rest at semicolons, so no statement may contain one.
--
-- User ids are VARBINARY (compared byte for byte, no collation: "Alice" and
-- "alice" are two users); keys, certificates, prekeys and envelopes are
-- stored in the SDK's own encodings; times are Unix seconds.

CREATE TABLE IF NOT EXISTS accounts (
    user_id     VARBINARY(255)  NOT NULL,
    identity    BINARY(32)      NOT NULL,
    -- The id the next linked device gets: device ids are never reused.
    next_device BIGINT UNSIGNED NOT NULL,
    created_at  BIGINT UNSIGNED NOT NULL,
    PRIMARY KEY (user_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS devices (
    user_id            VARBINARY(255)  NOT NULL,
    device_id          INT UNSIGNED    NOT NULL,
    auth_key           BINARY(32)      NOT NULL,
    certificate        BLOB            NULL,
    signed_prekey      BLOB            NULL,
    last_resort_prekey BLOB            NULL,
    push_token         BLOB            NULL,
    created_at         BIGINT UNSIGNED NOT NULL,
    PRIMARY KEY (user_id, device_id),
    CONSTRAINT devices_account FOREIGN KEY (user_id)
        REFERENCES accounts (user_id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS link_permissions (
    token      BINARY(32)      NOT NULL,
    user_id    VARBINARY(255)  NOT NULL,
    expires_at BIGINT UNSIGNED NOT NULL,
    PRIMARY KEY (token),
    KEY link_permissions_user (user_id),
    CONSTRAINT link_permissions_account FOREIGN KEY (user_id)
        REFERENCES accounts (user_id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS one_time_prekeys (
    user_id    VARBINARY(255) NOT NULL,
    device_id  INT UNSIGNED   NOT NULL,
    prekey_id  INT UNSIGNED   NOT NULL,
    public_key BINARY(32)     NOT NULL,
    PRIMARY KEY (user_id, device_id, prekey_id),
    CONSTRAINT one_time_prekeys_device FOREIGN KEY (user_id, device_id)
        REFERENCES devices (user_id, device_id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- An envelope is at most a little over 1 MiB: MEDIUMBLOB (16 MiB).
CREATE TABLE IF NOT EXISTS queue (
    seq              BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    envelope_id      BINARY(16)      NOT NULL,
    recipient_user   VARBINARY(255)  NOT NULL,
    recipient_device INT UNSIGNED    NOT NULL,
    sender_user      VARBINARY(255)  NOT NULL,
    sender_device    INT UNSIGNED    NOT NULL,
    server_time      BIGINT UNSIGNED NOT NULL,
    envelope         MEDIUMBLOB      NOT NULL,
    PRIMARY KEY (seq),
    UNIQUE KEY queue_envelope_id (envelope_id),
    KEY queue_recipient (recipient_user, recipient_device, seq),
    KEY queue_server_time (server_time),
    CONSTRAINT queue_recipient_device FOREIGN KEY (recipient_user, recipient_device)
        REFERENCES devices (user_id, device_id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- Kept when the uploading device is removed (its messages may still refer to
-- the blob); deleted with the account or by age.
CREATE TABLE IF NOT EXISTS blobs (
    blob_id      BINARY(16)      NOT NULL,
    owner_user   VARBINARY(255)  NOT NULL,
    owner_device INT UNSIGNED    NOT NULL,
    size         BIGINT UNSIGNED NOT NULL,
    created_at   BIGINT UNSIGNED NOT NULL,
    PRIMARY KEY (blob_id),
    KEY blobs_owner (owner_user),
    KEY blobs_created_at (created_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
