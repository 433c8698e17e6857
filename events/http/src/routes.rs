//! The route table of an API: its router together with the method and path of every route, so that
//! `tests/tests/it/openapi.rs` can hold the routes against `schemas/openapi.yaml`. Every route of both
//! APIs is registered through [`Routes::add`]; [`Routes::into_router`] adds the operations routes
//! and the request layers.

use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{on, MethodFilter};
use axum::Router;
use domain::catalog::kinds::{
    Model, Prompt, PromptTemplate, SystemModel, Variable, Workflow, WorkflowEntity,
    WorkflowEntityType,
};
use domain::catalog::Kind;

use crate::ops::{self, OpsState};

/// An API's routes over its state `S`, with the method and path of each.
pub struct Routes<S> {
    pub router: Router<S>,
    pub table: Vec<(Method, String)>,
    /// Routes that bound their own time (see [`Routes::add_self_timed`]).
    pub self_timed: Vec<String>,
}

/// The routes an API serves for one catalog kind `K` (contract §8), at its collection path
/// `/api/<kind>` and its item path `/api/<kind>/{id}`.
pub trait KindRoutes<S> {
    fn add<K: Kind>(routes: Routes<S>, collection: &str, item: &str) -> Routes<S>;
}

impl<S: Clone + Send + Sync + 'static> Default for Routes<S> {
    fn default() -> Self {
        Routes {
            router: Router::new(),
            table: Vec::new(),
            self_timed: Vec::new(),
        }
    }
}

impl<S: Clone + Send + Sync + 'static> Routes<S> {
    pub fn add<H, T>(mut self, method: Method, path: &str, handler: H) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).expect("a standard HTTP method");
        self.router = self.router.route(path, on(filter, handler));
        self.table.push((method, path.to_owned()));
        self
    }

    /// A route that bounds its own time (a model call, which has its own timeout, may outlast
    /// `REQUEST_TIMEOUT_SECS`): the request time limit does not cut it off.
    pub fn add_self_timed<H, T>(mut self, method: Method, path: &str, handler: H) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        self.self_timed.push(path.to_owned());
        self.add(method, path, handler)
    }

    /// The routes `R` adds for every catalog kind (those of `domain::catalog::kinds::ALL`).
    pub fn catalog<R: KindRoutes<S>>(self) -> Self {
        self.kind::<R, Variable>()
            .kind::<R, Model>()
            .kind::<R, SystemModel>()
            .kind::<R, Workflow>()
            .kind::<R, WorkflowEntity>()
            .kind::<R, WorkflowEntityType>()
            .kind::<R, PromptTemplate>()
            .kind::<R, Prompt>()
    }

    fn kind<R: KindRoutes<S>, K: Kind>(self) -> Self {
        let collection = format!("/api/{}", K::INFO.path);
        let item = format!("{collection}/{{id}}");
        R::add::<K>(self, &collection, &item)
    }
}

impl<S: OpsState> Routes<S> {
    /// The API's whole router over `state`: these routes and the operations routes, in the request
    /// layers; a path no route serves answers the API's `404`.
    pub fn into_router(self, state: S) -> Router {
        let request_timeout = state.request_timeout();
        let security = state.security().clone();
        ops::layered(
            self.router
                .merge(ops::routes())
                .fallback(ops::no_route)
                .with_state(state),
            request_timeout,
            self.self_timed,
            security,
        )
    }
}
