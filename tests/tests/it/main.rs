//! The black-box tests of the whole system, as one test binary (one link instead of one per file):
//! each module is one area, against real PostgreSQL, a real Kafka broker (tansu), nginx and the
//! services' own binaries where it says so. Run one area with `cargo test -p tests --test it <module>::`.
//!
//! The tests that hold transactions open on purpose are in `holds_transactions`: see there why.

mod access;
mod audit_trail;
mod catalog_access;
mod catalog_api;
mod erasure;
mod event_schemas;
mod executions;
mod feedback;
mod gateway;
mod history;
mod housekeeping;
mod http_contract;
mod jobs;
mod layering;
mod limits;
mod mcp;
mod migrations;
mod openapi;
mod ownership;
mod processed_queue;
mod projections;
mod runtime;
mod sandboxes;
mod secrets;
mod security_events;
mod sign_in;
mod tenants_api;
mod tokens;
mod usage;
mod verification;
mod write_path;
