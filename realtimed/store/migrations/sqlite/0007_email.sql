-- realtimed store schema, version 7 (SQLite): users' email addresses for the email
-- channel. address_key is the address in lower case (bounces name an address in any
-- case); verified is 0 or 1, set by the application; bounced_at is set when the
-- mail provider reports a bounce or a complaint, and cleared when the address is set
-- again; digest is off, hourly or daily (the user's emails go out one per
-- notification, or gathered per UTC hour or day). Times are microseconds since the
-- epoch, UTC.

CREATE TABLE email_addresses (
    user_id       TEXT    PRIMARY KEY,
    address       TEXT    NOT NULL,
    address_key   TEXT    NOT NULL,
    verified      INTEGER NOT NULL,
    digest        TEXT    NOT NULL DEFAULT 'off',
    bounced_at    INTEGER,
    bounce_kind   TEXT,
    bounce_reason TEXT,
    updated_at    INTEGER NOT NULL
);
CREATE INDEX email_addresses_by_address ON email_addresses (address_key);
