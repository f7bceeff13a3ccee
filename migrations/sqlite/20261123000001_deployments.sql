-- deployments: the burst report's POST /api/v1/deployments/. Each creation inserts a row and
-- audit rows and bumps the single shared counter row (the hot row every writer locks).
create table if not exists deployments (
    id              text primary key,
    name            text    not null,
    environment     text    not null,
    replicas        integer not null,
    status          text    not null,
    idempotency_key text unique,
    sequence        bigint unique,
    error           text,
    created_ms      bigint  not null,
    completed_ms    bigint
);
create index if not exists deployments_status_idx on deployments (status);

create table if not exists deployment_audit (
    id            integer primary key autoincrement,
    deployment_id text   not null references deployments (id),
    event         text   not null,
    at_ms         bigint not null
);

create table if not exists deployment_counter (
    id    integer primary key,
    total bigint  not null
);
insert into deployment_counter (id, total) values (1, 0) on conflict do nothing;
