-- claims: the poisoned-pool scenario's POST /api/claims. Plain autocommit writes of a unique
-- name (a second claim of the same name is a 409), the way most code talks to a pool.
create table if not exists claims (
    name       text   primary key,
    claimed_ms bigint not null
);
