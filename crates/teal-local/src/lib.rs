//! teal-local: the embedded runtime. The same release engine and router as
//! on Kubernetes, running the app's processes on one machine.

#![forbid(unsafe_code)]

pub mod analysis;
pub mod api;
pub mod client;
pub mod config;
pub mod daemon;
pub mod dashboard;
pub mod demo;
pub mod engine;
pub mod hooks;
pub mod http;
pub mod state;
pub mod supervisor;

pub use config::Config;
pub use engine::{Engine, EngineError, Notice, Status};
pub use supervisor::RevisionSpec;
