//! Connections to the outside: the database pool and the downstream HTTP client.

pub mod database;
pub mod http_client;
