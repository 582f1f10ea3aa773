//! Reply targets (SPEC §11.2): `{"plugin", "address"}` pairs and the shape rules of each plugin's
//! address. Pure; whether a named connector exists is checked by the caller.

use serde::{Deserialize, Serialize};

/// A reply target as stored: the plugin and its address string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyTarget {
    pub plugin: String,
    pub address: String,
}
