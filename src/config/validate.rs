//! Turns connector-file text into a validated [`Config`] plus every diagnostic.

use super::{Config, Loaded};

pub fn parse_str(_file: &str, _text: &str) -> Loaded {
    Loaded {
        config: Config::default(),
        diagnostics: Vec::new(),
    }
}
