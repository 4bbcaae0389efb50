-- realtimed store schema, version 3 (PostgreSQL): notification preferences per
-- type and delivery channel (in_app, push, and any channel added later), one row
-- per setting a user made; a channel with no row is on. The in_app and push
-- columns of version 1 become one row each.
--
-- Nodes of an earlier version read the table this drops: stop them before
-- migrating (they refuse to start against a newer schema).

CREATE TABLE notification_channel_preferences (
    user_id text    NOT NULL,
    type    text    NOT NULL,
    channel text    NOT NULL,
    enabled boolean NOT NULL,
    PRIMARY KEY (user_id, type, channel)
);

INSERT INTO notification_channel_preferences (user_id, type, channel, enabled)
SELECT user_id, type, 'in_app', in_app FROM notification_preferences
UNION ALL
SELECT user_id, type, 'push', push FROM notification_preferences;

DROP TABLE notification_preferences;
