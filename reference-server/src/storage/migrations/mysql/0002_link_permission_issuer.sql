-- A link permission belongs to the device that asked for it and dies with
-- it: removing a device (or replacing the account identity, which removes
-- the other devices) revokes what it was given. Outstanding permissions are
-- short-lived and dropped by this migration.
DROP TABLE IF EXISTS link_permissions;

CREATE TABLE IF NOT EXISTS link_permissions (
    token         BINARY(32)      NOT NULL,
    user_id       VARBINARY(255)  NOT NULL,
    issuer_device INT UNSIGNED    NOT NULL,
    expires_at    BIGINT UNSIGNED NOT NULL,
    PRIMARY KEY (token),
    KEY link_permissions_user (user_id),
    KEY link_permissions_issuer (user_id, issuer_device),
    CONSTRAINT link_permissions_device FOREIGN KEY (user_id, issuer_device)
        REFERENCES devices (user_id, device_id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
