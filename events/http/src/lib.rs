//! What the service processes share at their edge: the APIs' one error answer ([`ApiError`]), the
//! route table every API route is registered in ([`Routes`]), the operations routes and request
//! layers ([`ops`]), serving with graceful shutdown ([`serve()`], which command-api, query-api and
//! the projector all use), where a request came from ([`context`]), the life of an API process
//! ([`process`]), the settings the binaries read
//! ([`config`]) and their logging ([`telemetry`]), and the recording of refused requests as security
//! signals ([`security`]).

pub mod config;
pub mod context;
pub mod error;
pub mod heartbeat;
pub mod ops;
pub mod process;
pub mod routes;
pub mod security;
pub mod serve;
pub mod shutdown;
pub mod telemetry;

pub use error::ApiError;
pub use routes::Routes;
pub use serve::serve;
