//! The inbound pipeline. For now: request signatures (`auth`), shared with `sign`.
