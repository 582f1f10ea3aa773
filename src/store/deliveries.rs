//! The delivery queue's SQL (being built).
