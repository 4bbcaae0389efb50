-- realtimed store schema, version 7 (SQLite): notification expiry and device details.
--
-- notifications.expires_at (microseconds since the epoch, UTC; NULL: never):
-- an expired notification leaves the inbox (lists and unread counts skip it)
-- and the retention job deletes it. The unread counter keeps counting an
-- expired unread notification until it is deleted; readers subtract it.
-- devices.device_info: a JSON object of the device's model, OS and app version
-- as the app registered them.

ALTER TABLE notifications ADD COLUMN expires_at INTEGER;
CREATE INDEX notifications_expiring ON notifications (user_id, expires_at) WHERE expires_at IS NOT NULL AND read_at IS NULL;
CREATE INDEX notifications_expires_at ON notifications (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX notifications_unread_created ON notifications (created_at) WHERE read_at IS NULL;

ALTER TABLE devices ADD COLUMN device_info TEXT NOT NULL DEFAULT '{}';
