//! Connections to the outside: the database pool, Redis and the downstream HTTP client, and
//! the link proxy that can sit on all three (`LINK_PROXY`).

pub mod checkout;
pub mod database;
pub mod http_client;
pub mod link_proxy;
pub mod outbound_pool;
pub mod redis;
