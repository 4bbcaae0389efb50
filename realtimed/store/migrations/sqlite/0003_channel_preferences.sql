-- realtimed store schema, version 3 (SQLite): notification preferences per type
-- and delivery channel (in_app, push, and any channel added later), one row per
-- setting a user made; a channel with no row is on. The in_app and push columns
-- of version 1 become one row each. enabled is 0 or 1.

CREATE TABLE notification_channel_preferences (
    user_id TEXT    NOT NULL,
    type    TEXT    NOT NULL,
    channel TEXT    NOT NULL,
    enabled INTEGER NOT NULL,
    PRIMARY KEY (user_id, type, channel)
) WITHOUT ROWID;

INSERT INTO notification_channel_preferences (user_id, type, channel, enabled)
SELECT user_id, type, 'in_app', in_app FROM notification_preferences
UNION ALL
SELECT user_id, type, 'push', push FROM notification_preferences;

DROP TABLE notification_preferences;
