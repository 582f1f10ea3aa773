//! The http delivery plugin (being built).
