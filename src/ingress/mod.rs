//! The inbound pipeline. For now only request authentication ([`auth`]): the HMAC signature
//! schemes, shared by ingress verification and the `sign` command so the two cannot drift.
//!
//! `ingress` never sends outbound HTTP and never prints; it returns typed errors that the server
//! maps to status codes.

pub mod auth;
