//! The benchmark's write-path baselines: two small services doing the project's environment create
//! (`POST /environments {organizationId, name, description?}` answering `201` with the resource) and
//! rename (`PUT /environments/{id} {name}`), each over its own fresh database, so that the benchmark
//! compares the project with them in the same run on the same PostgreSQL.
//!
//! - [`crud`]: a plain axum + sqlx service with one table, a unique index on the organization and the
//!   case-folded name, and a foreign key to the organization. No authentication, no history.
//! - [`event_sourcing`]: the same commands on `cqrs-es` with `postgres-es` (events and snapshots in its own
//!   tables, a snapshot every 64 events as the project takes them). No authentication, no name
//!   uniqueness, no read model: what an event-sourcing library does when it does only the append.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Create {
    organization_id: Uuid,
    name: String,
    description: Option<String>,
}

#[derive(Deserialize)]
struct Rename {
    name: String,
}

fn failed(status: StatusCode, error: impl std::fmt::Display) -> Response {
    (
        status,
        Json(json!({ "error": "failed", "details": error.to_string() })),
    )
        .into_response()
}

pub mod crud {
    //! The plain CRUD baseline (module docs of `baselines`).

    use super::*;

    /// Creates the baseline's tables in `pool` and one organization; its router and that organization.
    pub async fn start(pool: PgPool) -> anyhow::Result<(Router, Uuid)> {
        sqlx::raw_sql(
            "CREATE TABLE crud_organizations (id uuid PRIMARY KEY, name text NOT NULL);
             CREATE TABLE crud_environments (
                 id uuid PRIMARY KEY,
                 organization_id uuid NOT NULL REFERENCES crud_organizations (id),
                 name text NOT NULL,
                 description text,
                 version bigint NOT NULL,
                 created_at timestamptz NOT NULL,
                 updated_at timestamptz NOT NULL);
             CREATE UNIQUE INDEX crud_environments_name ON crud_environments (organization_id, lower(name));",
        )
        .execute(&pool)
        .await?;
        let organization = Uuid::now_v7();
        sqlx::query("INSERT INTO crud_organizations VALUES ($1, 'Bench Corp')")
            .bind(organization)
            .execute(&pool)
            .await?;
        let router = Router::new()
            .route("/environments", post(create))
            .route("/environments/{id}", put(rename))
            .with_state(pool);
        Ok((router, organization))
    }

    async fn create(State(pool): State<PgPool>, Json(input): Json<Create>) -> Response {
        let row: Result<(Uuid, i64), _> = sqlx::query_as(
            "INSERT INTO crud_environments (id, organization_id, name, description, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 1, now(), now()) RETURNING id, version",
        )
        .bind(Uuid::now_v7())
        .bind(input.organization_id)
        .bind(&input.name)
        .bind(&input.description)
        .fetch_one(&pool)
        .await;
        match row {
            Ok((id, version)) => (
                StatusCode::CREATED,
                Json(
                    json!({ "id": id, "organizationId": input.organization_id, "name": input.name,
                             "description": input.description, "version": version }),
                ),
            )
                .into_response(),
            Err(error) => failed(StatusCode::CONFLICT, error),
        }
    }

    async fn rename(
        State(pool): State<PgPool>,
        Path(id): Path<Uuid>,
        Json(input): Json<Rename>,
    ) -> Response {
        let row: Result<Option<(i64,)>, _> = sqlx::query_as(
            "UPDATE crud_environments SET name = $2, version = version + 1, updated_at = now() \
             WHERE id = $1 RETURNING version",
        )
        .bind(id)
        .bind(&input.name)
        .fetch_optional(&pool)
        .await;
        match row {
            Ok(Some((version,))) => {
                Json(json!({ "id": id, "name": input.name, "version": version })).into_response()
            }
            Ok(None) => failed(StatusCode::NOT_FOUND, "no such environment"),
            Err(error) => failed(StatusCode::CONFLICT, error),
        }
    }
}

pub mod event_sourcing {
    //! The event-sourcing library baseline (module docs of `baselines`).

    use std::sync::Arc;

    use ::cqrs_es::event_sink::EventSink;
    use ::cqrs_es::persist::PersistedEventStore;
    use ::cqrs_es::{Aggregate, AggregateError, CqrsFramework, DomainEvent};
    use postgres_es::PostgresEventRepository;
    use serde::Serialize;

    use super::*;

    /// Events between snapshots, as the project's store takes them.
    const SNAPSHOT_EVERY: usize = 64;

    #[derive(Debug, Default, Serialize, Deserialize)]
    pub struct Environment {
        id: Option<Uuid>,
        organization_id: Option<Uuid>,
        name: String,
        description: Option<String>,
        version: i64,
    }

    pub enum Command {
        Create {
            id: Uuid,
            organization_id: Uuid,
            name: String,
            description: Option<String>,
        },
        Rename {
            name: String,
        },
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub enum Event {
        Created {
            id: Uuid,
            organization_id: Uuid,
            name: String,
            description: Option<String>,
        },
        Renamed {
            name: String,
        },
    }

    impl DomainEvent for Event {
        fn event_type(&self) -> String {
            match self {
                Event::Created { .. } => "environment.created",
                Event::Renamed { .. } => "environment.renamed",
            }
            .to_owned()
        }

        fn event_version(&self) -> String {
            "1".to_owned()
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    pub struct Refused(&'static str);

    impl Aggregate for Environment {
        const TYPE: &'static str = "environment";
        type Command = Command;
        type Event = Event;
        type Error = Refused;
        type Services = ();

        async fn handle(
            &mut self,
            command: Command,
            _: &(),
            sink: &EventSink<Self>,
        ) -> Result<(), Refused> {
            let event = match command {
                Command::Create { .. } if self.id.is_some() => return Err(Refused("exists")),
                Command::Create {
                    id,
                    organization_id,
                    name,
                    description,
                } => Event::Created {
                    id,
                    organization_id,
                    name,
                    description,
                },
                Command::Rename { .. } if self.id.is_none() => return Err(Refused("not found")),
                Command::Rename { name } => Event::Renamed { name },
            };
            sink.write(event, self).await;
            Ok(())
        }

        fn apply(&mut self, event: Event) {
            match event {
                Event::Created {
                    id,
                    organization_id,
                    name,
                    description,
                } => {
                    self.id = Some(id);
                    self.organization_id = Some(organization_id);
                    self.name = name;
                    self.description = description;
                }
                Event::Renamed { name } => self.name = name,
            }
            self.version += 1;
        }
    }

    type Framework =
        Arc<CqrsFramework<Environment, PersistedEventStore<PostgresEventRepository, Environment>>>;

    /// Creates the library's tables in `pool` (its own schema, under names of their own); its router.
    pub async fn start(pool: PgPool) -> anyhow::Result<Router> {
        sqlx::raw_sql(
            "CREATE TABLE cqrs_events (
                 aggregate_type text NOT NULL, aggregate_id text NOT NULL,
                 sequence bigint CHECK (sequence >= 0) NOT NULL, event_type text NOT NULL,
                 event_version text NOT NULL, payload json NOT NULL, metadata json NOT NULL,
                 PRIMARY KEY (aggregate_type, aggregate_id, sequence));
             CREATE TABLE cqrs_snapshots (
                 aggregate_type text NOT NULL, aggregate_id text NOT NULL,
                 last_sequence bigint CHECK (last_sequence >= 0) NOT NULL,
                 current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL, payload json NOT NULL,
                 PRIMARY KEY (aggregate_type, aggregate_id, last_sequence));",
        )
        .execute(&pool)
        .await?;
        let repository =
            PostgresEventRepository::new(pool).with_tables("cqrs_events", "cqrs_snapshots");
        let store = PersistedEventStore::new_snapshot_store(repository, SNAPSHOT_EVERY);
        let framework: Framework = Arc::new(CqrsFramework::new(store, vec![], ()));
        Ok(Router::new()
            .route("/environments", post(create))
            .route("/environments/{id}", put(rename))
            .with_state(framework))
    }

    fn answer(
        result: Result<(), AggregateError<Refused>>,
        status: StatusCode,
        body: Value,
    ) -> Response {
        match result {
            Ok(()) => (status, Json(body)).into_response(),
            Err(AggregateError::UserError(refused)) => failed(StatusCode::CONFLICT, refused),
            Err(AggregateError::AggregateConflict) => failed(StatusCode::CONFLICT, "conflict"),
            Err(error) => failed(StatusCode::INTERNAL_SERVER_ERROR, error),
        }
    }

    async fn create(State(framework): State<Framework>, Json(input): Json<Create>) -> Response {
        let id = Uuid::now_v7();
        let body = json!({ "id": id, "organizationId": input.organization_id, "name": input.name,
                           "description": input.description });
        let command = Command::Create {
            id,
            organization_id: input.organization_id,
            name: input.name,
            description: input.description,
        };
        answer(
            framework.execute(&id.to_string(), command).await,
            StatusCode::CREATED,
            body,
        )
    }

    async fn rename(
        State(framework): State<Framework>,
        Path(id): Path<Uuid>,
        Json(input): Json<Rename>,
    ) -> Response {
        let body = json!({ "id": id, "name": input.name });
        let command = Command::Rename { name: input.name };
        answer(
            framework.execute(&id.to_string(), command).await,
            StatusCode::OK,
            body,
        )
    }
}
