//! Run handlers inside `serve` (SPEC §11.1): `echo` and `exec` workers.
