-- realtimed store schema, version 5 (PostgreSQL): webhook endpoints and the
-- attempts of their deliveries. An endpoint's source is 'config' (from
-- [[webhooks.endpoints]], replaced on every start and reload) or 'api' (made
-- through the server API, kept).

CREATE TABLE webhook_endpoints (
    id                   text        PRIMARY KEY,
    source               text        NOT NULL,
    url                  text        NOT NULL,
    events               jsonb       NOT NULL,
    secrets              jsonb       NOT NULL,
    enabled              boolean     NOT NULL,
    consecutive_failures integer     NOT NULL DEFAULT 0,
    disabled_at          timestamptz,
    created_at           timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL
);

CREATE TABLE webhook_attempts (
    n            bigserial   PRIMARY KEY,
    delivery_id  text        NOT NULL,
    webhook_id   text        NOT NULL,
    endpoint_id  text        NOT NULL,
    event        text        NOT NULL,
    attempt      integer     NOT NULL,
    status       integer,
    error        text,
    latency_ms   double precision NOT NULL,
    response     text        NOT NULL,
    at           timestamptz NOT NULL
);
CREATE INDEX webhook_attempts_by_endpoint ON webhook_attempts (endpoint_id, n);
CREATE INDEX webhook_attempts_by_delivery ON webhook_attempts (delivery_id, n);
