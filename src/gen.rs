//! Renders man pages and completion scripts from the clap definition in `cli`.
