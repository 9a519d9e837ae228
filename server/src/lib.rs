//! kenning: a language server that knows the repository it runs in.
//!
//! The indexing flow is `workspace` (walk) → `chunk` → `embed` → `store` (Lance), driven by `index`;
//! `retrieve` answers searches from the store; `generate` runs local models (llama.cpp). See ARCHITECTURE.md for the map and the invariants.
#![deny(clippy::print_stdout)]

pub mod ask;
pub mod assets;
pub mod chunk;
pub mod cli;
pub mod complete;
pub mod config;
pub mod dataset;
pub mod embed;
pub mod eval;
pub mod finetune;
pub mod formats;
pub mod generate;
pub mod index;
pub mod lsp;
pub mod models;
pub mod paths;
pub mod prompt;
pub mod retrieve;
mod rng;
pub mod secrets;
pub mod session;
pub mod shared;
pub mod store;
pub mod workspace;
