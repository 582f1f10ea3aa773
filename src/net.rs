//! Outbound address policy: which IP addresses count as public (SPEC §11.5).
