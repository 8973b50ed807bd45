//! `raftkv serve`'s command-line flags, shared by every binary that runs a member (`raftkv
//! serve`, `raftkv-cron serve --embed`): etcd's flag names, `RAFTKV_*` environment variables and
//! the `--config-file` TOML layer, resolved into a [`crate::Config`].
//!
//! Built only with the `flags` feature (it brings clap, toml and tracing-subscriber's filter
//! syntax, which the server itself does not need).
//!
//! - [`args`]: [`ServeArgs`] and its resolution into [`Settings`] (flag > env > file > default).
//! - [`mod@file`]: the `--config-file` TOML layer.
//! - [`process`]: the log subscriber and the stop signals of a binary.

pub mod args;
pub mod file;
pub mod process;

pub use args::{ServeArgs, Settings};
