-- realtimed store schema, version 9 (PostgreSQL): activity feeds. An activity
-- is stored once (activities) and listed in each of its feeds (feed_items) at
-- the feed's next seq; feeds keeps each feed's last seq. feed_epoch holds the
-- epoch of every feed of this database, chosen when the schema is made: a
-- database that is replaced by a new one gives its feeds a new epoch. actor, verb,
-- object and time are copied into feed_items so that a feed's filters and order
-- use its own indexes. search holds the words of each activity (the 'simple'
-- configuration: no stemming, no stop words), with a GIN index without a pending
-- list (fastupdate off): each insert updates it at once, so that no search has to
-- scan an unsorted list of recent entries (which made searches 50 times slower).

CREATE TABLE activities (
    n          bigserial   PRIMARY KEY,
    actor      text        NOT NULL,
    verb       text        NOT NULL,
    object     text        NOT NULL,
    target     text,
    time       timestamptz NOT NULL,
    data       jsonb       NOT NULL,
    feeds      jsonb       NOT NULL,
    created_at timestamptz NOT NULL,
    search     tsvector    NOT NULL
);
CREATE INDEX activities_search ON activities USING gin (search) WITH (fastupdate = off);

CREATE TABLE feeds (
    feed     text   PRIMARY KEY,
    last_seq bigint NOT NULL
);

CREATE TABLE feed_epoch (
    epoch text NOT NULL
);
INSERT INTO feed_epoch (epoch) VALUES (substr(md5(random()::text || clock_timestamp()::text), 1, 16));

CREATE TABLE feed_items (
    feed     text        NOT NULL,
    seq      bigint      NOT NULL,
    activity bigint      NOT NULL,
    time     timestamptz NOT NULL,
    actor    text        NOT NULL,
    verb     text        NOT NULL,
    object   text        NOT NULL,
    PRIMARY KEY (feed, seq)
);
CREATE INDEX feed_items_by_time ON feed_items (feed, time, seq);
CREATE INDEX feed_items_by_actor ON feed_items (feed, actor, time);
CREATE INDEX feed_items_by_verb ON feed_items (feed, verb, time);
CREATE INDEX feed_items_by_object ON feed_items (feed, object, time);
CREATE INDEX feed_items_by_activity ON feed_items (activity);
