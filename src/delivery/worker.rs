//! Delivery worker threads (being built).
