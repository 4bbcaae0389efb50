-- realtimed store schema, version 9 (SQLite): activity feeds. An activity is
-- stored once (activities) and listed in each of its feeds (feed_items) at the
-- feed's next seq; feeds keeps each feed's last seq. feed_epoch holds the epoch
-- of every feed of this database, chosen when the schema is made: a database
-- that is replaced by a new one gives its feeds a new epoch. actor, verb,
-- object and time are copied into feed_items so that a feed's filters and order
-- use its own indexes. activities_fts indexes the words of each activity (its
-- rowid is the activity's n). Times are microseconds since the epoch, UTC.

CREATE TABLE activities (
    n          INTEGER PRIMARY KEY AUTOINCREMENT,
    actor      TEXT    NOT NULL,
    verb       TEXT    NOT NULL,
    object     TEXT    NOT NULL,
    target     TEXT,
    time       INTEGER NOT NULL,
    data       TEXT    NOT NULL,
    feeds      TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE feeds (
    feed     TEXT    PRIMARY KEY,
    last_seq INTEGER NOT NULL
);

CREATE TABLE feed_epoch (
    epoch TEXT NOT NULL
);
INSERT INTO feed_epoch (epoch) VALUES (lower(hex(randomblob(8))));

CREATE TABLE feed_items (
    feed     TEXT    NOT NULL,
    seq      INTEGER NOT NULL,
    activity INTEGER NOT NULL,
    time     INTEGER NOT NULL,
    actor    TEXT    NOT NULL,
    verb     TEXT    NOT NULL,
    object   TEXT    NOT NULL,
    PRIMARY KEY (feed, seq)
) WITHOUT ROWID;
CREATE INDEX feed_items_by_time ON feed_items (feed, time, seq);
CREATE INDEX feed_items_by_actor ON feed_items (feed, actor, time);
CREATE INDEX feed_items_by_verb ON feed_items (feed, verb, time);
CREATE INDEX feed_items_by_object ON feed_items (feed, object, time);
CREATE INDEX feed_items_by_activity ON feed_items (activity);

CREATE VIRTUAL TABLE activities_fts USING fts5 (body);
