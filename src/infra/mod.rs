//! Connections to the outside: the database pool, Redis and the downstream HTTP client.

pub mod database;
pub mod http_client;
pub mod outbound_pool;
pub mod redis;
