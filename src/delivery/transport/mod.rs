//! Delivery transports, one file per plugin.
pub mod http;
