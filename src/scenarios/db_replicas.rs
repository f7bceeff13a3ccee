//! `db-replicas` — the replicas report: every replica opens its own pool, so replicas × (pool
//! size + overflow) passes PostgreSQL's `max_connections` and the server refuses connections
//! that no single replica's pool would ever ask for. It has no routes of its own: it is
//! `db-pool`'s routes, run on several replicas in front of one PostgreSQL (the k8s `replicas`
//! overlay, `scripts/k6-replicas.sh`), and PgBouncer in transaction mode is the cure.

use axum::Router;

use crate::scenarios::{K6Script, Scenario};

/// The catalog entry (see [`crate::scenarios::ALL`]).
pub const SCENARIO: Scenario = Scenario {
    id: "db-replicas",
    title: "replicas × pool size passes the server's max_connections",
    doc: "docs/scenarios/db-replicas.md",
    k6: K6Script {
        path: "load-tests/db-replicas.js",
        source: include_str!("../../load-tests/db-replicas.js"),
        smoke: false,
    },
    test: "tests/scenarios/db_replicas.rs",
    router: Router::new,
    operations: Vec::new,
    gauges: &[],
};
