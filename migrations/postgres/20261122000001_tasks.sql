-- tasks: the seed app's CRUD table (POST/GET /api/tasks).
create table if not exists tasks (
    id          bigserial primary key,
    title       text        not null,
    description text,
    status      text        not null default 'pending',
    created_at  timestamptz not null default now()
);
create index if not exists tasks_created_at_idx on tasks (created_at desc);
