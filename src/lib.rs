//! klantbeeld: builds a golden customer table from the dumps of a company's source systems.
//!
//! The stages of a run, one module each: [`config`] -> [`extract`] -> [`stage`] ->
//! [`resolve`] -> [`golden`] -> [`publish`]; [`pipeline`] runs them in order and [`cli`]
//! is the command line.

pub mod check;
pub mod cli;
pub mod config;
pub mod demo;
pub mod distributed;
pub mod engine;
pub mod enrich;
pub mod error;
pub mod eval;
pub mod explain;
pub mod extract;
pub mod golden;
pub mod manifest;
pub mod pipeline;
pub mod progress;
pub mod publish;
pub mod resolve;
pub mod stage;
pub mod storage;
pub mod tables;
pub mod udf;

pub use error::{Error, ExitClass, exit};
