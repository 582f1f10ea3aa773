//! Receipt retention (being built).
