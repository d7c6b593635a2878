//! warsha — firmware of an offline edge box that learns a plant's documents.
//!
//! The library holds every capability; `src/main.rs` only parses the command
//! line and calls into [`commands`]. Modules talk through small typed
//! interfaces: nothing in `model/` knows about SQLite, nothing in `text/`
//! knows about files, and only `store/` speaks SQL.

pub mod cli;
pub mod commands;
pub mod config;
pub mod data_dir;
pub mod model;
pub mod store;
pub mod train;
