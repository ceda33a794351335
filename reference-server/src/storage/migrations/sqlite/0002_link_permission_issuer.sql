-- A link permission belongs to the device that asked for it and dies with
-- it: removing a device (or replacing the account identity, which removes
-- the other devices) revokes what it was given. Outstanding permissions are
-- short-lived and dropped by this migration.
DROP TABLE link_permissions;

CREATE TABLE link_permissions (
    token         BLOB    NOT NULL PRIMARY KEY,
    user_id       TEXT    NOT NULL,
    issuer_device INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    FOREIGN KEY (user_id, issuer_device) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
) STRICT, WITHOUT ROWID;

CREATE INDEX link_permissions_user ON link_permissions (user_id);
CREATE INDEX link_permissions_issuer ON link_permissions (user_id, issuer_device);
