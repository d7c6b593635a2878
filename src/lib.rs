//! warsha — firmware of an offline edge box that learns a plant's documents.
//!
//! The library holds every capability; `src/main.rs` only parses the command
//! line and calls into [`commands`]. Modules talk through small typed
//! interfaces: nothing in `model/` knows about SQLite, nothing in `text/`
//! knows about files, and only `store/` speaks SQL.

// Errors here carry their context (paths, tensor names, SQLite errors) as data
// and travel only on cold paths; boxing them would buy nothing measurable.
#![allow(clippy::result_large_err)]

pub mod adapters;
pub mod answer;
pub mod cli;
pub mod commands;
pub mod config;
pub mod cycle;
pub mod data_dir;
pub mod demo_assets;
pub mod eval;
pub mod ingest;
pub mod install;
pub(crate) mod kernels;
pub mod model;
pub mod service;
pub mod store;
pub mod sys;
pub mod text;
pub mod train;
