//! The album's parts, one module each; `main.rs` is the command line over them. They are
//! a library so the integration tests can set up databases exactly as the app does.

pub mod captioner;
pub mod db;
pub mod exif;
pub mod export;
pub mod index;
pub mod scan;
pub mod search;
pub mod serve;
pub mod trips;
