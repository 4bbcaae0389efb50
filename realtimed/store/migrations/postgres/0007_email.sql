-- realtimed store schema, version 7 (PostgreSQL): users' email addresses for the
-- email channel. address_key is the address in lower case (bounces name an address
-- in any case); verified is set by the application; bounced_at is set when the mail
-- provider reports a bounce or a complaint, and cleared when the address is set again;
-- digest is off, hourly or daily (the user's emails go out one per notification, or
-- gathered per UTC hour or day).

CREATE TABLE email_addresses (
    user_id       text        PRIMARY KEY,
    address       text        NOT NULL,
    address_key   text        NOT NULL,
    verified      boolean     NOT NULL,
    digest        text        NOT NULL DEFAULT 'off',
    bounced_at    timestamptz,
    bounce_kind   text,
    bounce_reason text,
    updated_at    timestamptz NOT NULL
);
CREATE INDEX email_addresses_by_address ON email_addresses (address_key);
