-- tasks: the seed app's CRUD table (POST/GET /api/tasks).
create table if not exists tasks (
    id          integer primary key autoincrement,
    title       text not null,
    description text,
    status      text not null default 'pending',
    created_at  text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
create index if not exists tasks_created_at_idx on tasks (created_at desc);
