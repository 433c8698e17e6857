//! Reads of every catalog resource (variables, models, system models, workflows, workflow entities and
//! their types, prompt templates, prompts) from the `catalog` read model: lists and details for each
//! kind, the visible system models, workflow-entity usage counts, and prompt-template versions, which
//! the projection keeps one row each (`read_models.prompt_template_versions`), so that a page of
//! versions reads that page's rows.
//!
//! Rows hold ids of what they refer to; the nested names a read shows (`organization.name`,
//! `environment.name`, `model.name`) are joined in at read time, so a rename shows everywhere at once.
//! A read therefore waits for both projections involved: `catalog` and `tenants`. A detail read with
//! `asOf` is folded from the resource's stream instead (see [`crate::as_of`]).

use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use contracts::read_models::{
    catalog_count, catalog_environment_count, catalog_organization_count, CATALOG, TENANTS,
};
use domain::catalog::kinds::{Model, PromptTemplate, SystemModel, WorkflowEntity};
use domain::catalog::{view, Document, DocumentData, DocumentState, Kind, KindInfo, Nested, Scope};
use domain::environment::Environment;
use domain::history::StreamState;
use domain::organization::Organization;
use domain::{AccessError, Action, Actor, Aggregate};
use http_layer::ApiError;
use identity::auth::Authenticated;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::as_of;
use crate::consistency::ReadConsistency;
use crate::extract::{parse_id, Caller, Params};
use crate::pagination::{contains_pattern, Page, PageRequest};
use crate::AppState;

#[derive(sqlx::FromRow)]
pub(crate) struct Row {
    id: Uuid,
    organization_id: Option<Uuid>,
    fields: event_log::Stored,
    secrets: sqlx::types::Json<Vec<String>>,
    annotations: sqlx::types::Json<Map<String, Value>>,
    annotation_events: i64,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    organization_name: Option<String>,
    environment_name: Option<String>,
    model_name: Option<String>,
}

impl Row {
    /// How many versions the template has: its created and updated events (annotations are not).
    fn content_version(&self) -> i64 {
        self.version - self.annotation_events
    }

    fn view(self, info: &KindInfo) -> Value {
        let data = DocumentData {
            id: self.id,
            fields: match self.fields.0 {
                Value::Object(fields) => fields,
                _ => Map::new(),
            },
            secrets: self.secrets.0.into_iter().collect(),
            annotations: self.annotations.0,
            annotation_events: self.annotation_events,
            created_at: self.created_at,
            updated_at: self.updated_at,
        };
        let nested = Nested {
            organization: self.organization_name,
            environment: self.environment_name,
            model: self.model_name,
        };
        view(info, &data, self.version, &nested)
    }
}

/// The rows `matching` selects (a query over `read_models.catalog c`), newest first, with the names
/// they nest. The names are looked up for the rows of the page only: a deep page skips its offset in
/// the catalog alone. They are subqueries, not joins: PostgreSQL plans a list anew on every request
/// (a `LIMIT` that is a parameter keeps it on custom plans), and subqueries cost about a third less
/// to plan than a four-way join.
fn with_names(matching: &str) -> String {
    format!(
        "SELECT c.id, c.organization_id, c.fields, c.secrets, c.annotations, c.annotation_events, c.version, \
                c.created_at, c.updated_at, \
                (SELECT o.name FROM read_models.organizations o WHERE o.id = c.organization_id) AS organization_name, \
                (SELECT e.name FROM read_models.environments e WHERE e.id = c.environment_id) AS environment_name, \
                (SELECT m.name FROM read_models.catalog m WHERE m.id = c.model_id) AS model_name \
         FROM ({matching}) c \
         ORDER BY c.created_at DESC, c.id DESC"
    )
}

/// Which rows a list may show.
struct ListFilter {
    /// `None`: every organization's (System users).
    organizations: Option<Vec<Uuid>>,
    /// Whether platform-wide rows (no organization) are included.
    platform: bool,
    environment: Option<Uuid>,
    pattern: Option<String>,
}

pub async fn list<K: Kind>(
    State(state): State<AppState>,
    Caller(Authenticated { actor, .. }): Caller,
    consistency: ReadConsistency,
    params: Params,
) -> Result<Json<Page<Value>>, ApiError> {
    let info = &K::INFO;
    let page = PageRequest::parse(params.get("page"), params.get("limit"))?;
    let pattern = params.search()?.map(contains_pattern);
    let environment = params.uuid("environmentId")?;
    let organization = params.uuid("organizationId")?;
    let organizations = match (info.scope, organization) {
        (Scope::Platform, _) => {
            actor.authorize_platform(info.resource, Action::Read)?;
            None
        }
        (_, Some(organization)) => {
            actor
                .authorize_in(organization, info.resource, Action::Read)
                .map_err(ApiError::denied("Organization", organization))?;
            Some(vec![organization])
        }
        (_, None) if info.list_requires_organization => {
            return Err(ApiError::invalid("organizationId", "is required"))
        }
        (_, None) => actor.readable_organizations(info.resource),
    };
    let filter = ListFilter {
        platform: matches!(info.scope, Scope::Platform | Scope::Either) && environment.is_none(),
        organizations,
        environment,
        pattern,
    };
    wait(&state, consistency).await?;
    let query = with_names(
        "SELECT * FROM read_models.catalog c WHERE c.kind = $1 \
           AND ($2::uuid[] IS NULL OR c.organization_id = ANY($2) OR ($3 AND c.organization_id IS NULL)) \
           AND ($4::uuid IS NULL OR c.environment_id = $4) AND ($5::text IS NULL OR c.name ILIKE $5) \
         ORDER BY c.created_at DESC, c.id DESC LIMIT $6 OFFSET $7",
    );
    let rows = sqlx::query_as::<_, Row>(&query)
        .bind(info.type_name)
        .bind(&filter.organizations)
        .bind(filter.platform)
        .bind(filter.environment)
        .bind(&filter.pattern)
        .bind(page.limit)
        .bind(page.offset())
        .fetch_all(&state.pool);
    // The page and its total are independent reads: on two connections at once.
    let (rows, total) = tokio::try_join!(
        async { rows.await.map_err(ApiError::from) },
        total(&state, info, &filter)
    )?;
    let data: Vec<Value> = rows.into_iter().map(|row| row.view(info)).collect();
    Ok(Json(Page::new(data, page, total)))
}

/// The exact number of rows a list matches: from the kept counts where the filter is one of their
/// scopes, counted otherwise (searches, and environments not known to be the caller's).
async fn total(state: &AppState, info: &KindInfo, filter: &ListFilter) -> Result<i64, ApiError> {
    let scopes: Option<Vec<String>> =
        match (&filter.pattern, filter.environment, &filter.organizations) {
            (Some(_), _, _) => None,
            (None, Some(environment), organizations) => {
                let owner: Option<Uuid> = sqlx::query_scalar(
                    "SELECT organization_id FROM read_models.environments WHERE id = $1",
                )
                .bind(environment)
                .fetch_optional(&state.pool)
                .await?;
                match (owner, organizations) {
                    (Some(_), None) => {
                        Some(vec![catalog_environment_count(info.type_name, environment)])
                    }
                    (Some(owner), Some(readable)) if readable.contains(&owner) => {
                        Some(vec![catalog_environment_count(info.type_name, environment)])
                    }
                    // Not an environment the caller may read: the list is empty.
                    _ => return Ok(0),
                }
            }
            (None, None, None) => Some(vec![catalog_count(info.type_name)]),
            (None, None, Some(organizations)) => {
                let mut scopes: Vec<String> = organizations
                    .iter()
                    .map(|o| catalog_organization_count(info.type_name, Some(*o)))
                    .collect();
                if filter.platform {
                    scopes.push(catalog_organization_count(info.type_name, None));
                }
                Some(scopes)
            }
        };
    let total = match scopes {
        Some(scopes) => sqlx::query_scalar(
            "SELECT COALESCE(sum(count), 0)::bigint FROM read_models.catalog_counts WHERE scope = ANY($1)",
        )
        .bind(&scopes)
        .fetch_one(&state.pool)
        .await?,
        None => sqlx::query_scalar(
            "SELECT count(*) FROM read_models.catalog c WHERE c.kind = $1 \
               AND ($2::uuid[] IS NULL OR c.organization_id = ANY($2) OR ($3 AND c.organization_id IS NULL)) \
               AND ($4::uuid IS NULL OR c.environment_id = $4) AND ($5::text IS NULL OR c.name ILIKE $5)",
        )
        .bind(info.type_name)
        .bind(&filter.organizations)
        .bind(filter.platform)
        .bind(filter.environment)
        .bind(&filter.pattern)
        .fetch_one(&state.pool)
        .await?,
    };
    Ok(total)
}

pub async fn get<K: Kind>(
    State(state): State<AppState>,
    Caller(Authenticated { actor, .. }): Caller,
    consistency: ReadConsistency,
    Path(id): Path<String>,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    if let Some(at) = as_of::requested(&params)? {
        return get_as_of::<K>(&state, &actor, id, at).await.map(Json);
    }
    let row = load::<K>(&state, &actor, consistency, id).await?;
    Ok(Json(row.view(&K::INFO)))
}

/// The resource as its stream says it was at `at`, with the names it nests as they were then.
async fn get_as_of<K: Kind>(
    state: &AppState,
    actor: &Actor,
    id: Uuid,
    at: DateTime<Utc>,
) -> Result<Value, ApiError> {
    let info = &K::INFO;
    authorize_early(actor, info)?;
    let past = as_of::fold(
        &state.pool,
        &Document::<K>::stream_id(id),
        at,
        info.label,
        id,
    )
    .await?;
    authorize(actor, info, past.organization_id).map_err(as_of::denied(info.label, id, at))?;
    let StreamState::Document(
        _,
        DocumentState {
            live: Some(data), ..
        },
    ) = &past.state
    else {
        return Err(as_of::not_live(info.label, id, at, &past.state));
    };
    let organization = data.organization_id().map(Organization::stream_id);
    let environment = data.environment_id().map(Environment::stream_id);
    let model = data.model_id().map(Document::<Model>::stream_id);
    let streams: Vec<String> = [&organization, &environment, &model]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let names = as_of::names(&state.pool, &streams, at).await?;
    let name = |stream: &Option<String>| stream.as_ref().and_then(|s| names.get(s).cloned());
    let nested = Nested {
        organization: name(&organization),
        environment: name(&environment),
        model: name(&model),
    };
    Ok(view(info, data, past.version, &nested))
}

/// A row the caller may read, or the `404` a missing one gets.
pub(crate) async fn load<K: Kind>(
    state: &AppState,
    actor: &Actor,
    consistency: ReadConsistency,
    id: Uuid,
) -> Result<Row, ApiError> {
    let info = &K::INFO;
    authorize_early(actor, info)?;
    wait(state, consistency).await?;
    let row: Option<Row> = sqlx::query_as(&with_names(
        "SELECT * FROM read_models.catalog c WHERE c.id = $1 AND c.kind = $2",
    ))
    .bind(id)
    .bind(info.type_name)
    .fetch_optional(&state.pool)
    .await?;
    let row = row.ok_or_else(|| ApiError::not_found(info.label, id))?;
    authorize(actor, info, row.organization_id).map_err(ApiError::denied(info.label, id))?;
    Ok(row)
}

fn authorize_early(actor: &Actor, info: &KindInfo) -> Result<(), ApiError> {
    match info.scope {
        Scope::Platform => actor
            .authorize_platform(info.resource, Action::Read)
            .map(drop),
        Scope::Organization | Scope::Either => {
            actor.authorize_anywhere(info.resource, Action::Read)
        }
    }
    .map_err(Into::into)
}

/// Platform-wide entity types are readable by everyone; system models by System users only.
fn authorize(
    actor: &Actor,
    info: &KindInfo,
    organization: Option<Uuid>,
) -> Result<(), AccessError> {
    match (organization, info.scope) {
        (Some(organization), _) => actor
            .authorize_in(organization, info.resource, Action::Read)
            .map(drop),
        (None, Scope::Either) => Ok(()),
        (None, _) => actor
            .authorize_platform(info.resource, Action::Read)
            .map(drop),
    }
}

async fn wait(state: &AppState, consistency: ReadConsistency) -> Result<(), ApiError> {
    state
        .consistency
        .wait_all(&[CATALOG, TENANTS], consistency)
        .await
}

/// `GET /api/system-models/visible`: for any signed-in user, the system models marked visible, without
/// anything about their credentials.
pub async fn visible_system_models(
    State(state): State<AppState>,
    Caller(_): Caller,
    consistency: ReadConsistency,
    params: Params,
) -> Result<Json<Page<Value>>, ApiError> {
    let info = &SystemModel::INFO;
    let page = PageRequest::parse(params.get("page"), params.get("limit"))?;
    let pattern = params.search()?.map(contains_pattern);
    wait(&state, consistency).await?;
    const VISIBLE: &str =
        "c.kind = $1 AND c.fields->>'visible' = 'true' AND ($2::text IS NULL OR c.name ILIKE $2)";
    let rows: Vec<Row> = sqlx::query_as(&with_names(&format!(
        "SELECT * FROM read_models.catalog c WHERE {VISIBLE} ORDER BY c.created_at DESC, c.id DESC LIMIT $3 OFFSET $4"
    )))
    .bind(info.type_name)
    .bind(&pattern)
    .bind(page.limit)
    .bind(page.offset())
    .fetch_all(&state.pool)
    .await?;
    let total: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM read_models.catalog c WHERE {VISIBLE}"
    ))
    .bind(info.type_name)
    .bind(&pattern)
    .fetch_one(&state.pool)
    .await?;
    let data = rows
        .into_iter()
        .map(|row| {
            let mut view = row.view(info);
            if let Value::Object(fields) = &mut view {
                for slot in info.write_only {
                    fields.remove(slot.flag);
                }
            }
            view
        })
        .collect();
    Ok(Json(Page::new(data, page, total)))
}

/// `GET /api/workflow-entities/{id}/usage-count`: how many workflows use the entity.
pub async fn usage_count(
    State(state): State<AppState>,
    Caller(Authenticated { actor, .. }): Caller,
    consistency: ReadConsistency,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    load::<WorkflowEntity>(&state, &actor, consistency, id).await?;
    let count: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM read_models.workflow_entity_usage WHERE entity_id = $1",
    )
    .bind(id)
    .fetch_one(&state.pool)
    .await?;
    Ok(Json(json!({ "id": id, "count": count })))
}

/// One row of `read_models.prompt_template_versions`, with the name of the model that version names.
#[derive(sqlx::FromRow)]
struct VersionRow {
    version: i64,
    fields: event_log::Stored,
    secrets: sqlx::types::Json<Vec<String>>,
    changed_by: event_log::Stored,
    changed_at: DateTime<Utc>,
    changes: sqlx::types::Json<Vec<String>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    model_name: Option<String>,
}

impl VersionRow {
    /// The version as contract §6 shows it: the template as it was after the version's event, with
    /// the current names of its organization and environment (`current`'s) and of the model it named.
    fn view(self, id: Uuid, current: &Row) -> Value {
        let data = DocumentData {
            id,
            fields: match self.fields.0 {
                Value::Object(fields) => fields,
                _ => Map::new(),
            },
            secrets: self.secrets.0.into_iter().collect(),
            annotations: Map::new(),
            annotation_events: 0,
            created_at: self.created_at,
            updated_at: self.updated_at,
        };
        let nested = Nested {
            organization: current.organization_name.clone(),
            environment: current.environment_name.clone(),
            model: self.model_name,
        };
        let mut view = view(&PromptTemplate::INFO, &data, self.version, &nested);
        if let Value::Object(fields) = &mut view {
            fields.insert("changedBy".into(), self.changed_by.0);
            fields.insert(
                "changedAt".into(),
                Value::String(self.changed_at.to_rfc3339_opts(SecondsFormat::Millis, true)),
            );
            fields.insert("changes".into(), json!(self.changes.0));
        }
        view
    }
}

/// The versions of template `$1` up to version `$2`, with `{rest}` (an order, a limit, a condition)
/// applied. The model name is joined to the rows read only.
fn versions_query(rest: &str) -> String {
    format!(
        "SELECT v.version, v.fields, v.secrets, v.changed_by, v.changed_at, v.changes, v.created_at, \
                v.updated_at, m.name AS model_name \
         FROM (SELECT * FROM read_models.prompt_template_versions \
               WHERE template_id = $1 AND version <= $2 {rest}) v \
         LEFT JOIN read_models.catalog m ON m.id = (v.fields->>'modelId')::uuid \
         ORDER BY v.version DESC"
    )
}

/// `GET /api/prompt-templates/{id}/versions`: newest first, paginated (contract §6). The page is read
/// from `read_models.prompt_template_versions`, so a request costs the rows it shows however long the
/// template's history is.
pub async fn list_versions(
    State(state): State<AppState>,
    Caller(Authenticated { actor, .. }): Caller,
    consistency: ReadConsistency,
    Path(id): Path<String>,
    params: Params,
) -> Result<Json<Page<Value>>, ApiError> {
    let id = parse_id(&id)?;
    let page = PageRequest::parse(params.get("page"), params.get("limit"))?;
    // The current row decides access (and answers 404 for deleted or hidden templates).
    let current = load::<PromptTemplate>(&state, &actor, consistency, id).await?;
    // Every created or updated event of a live template made a version, so that is how many it has.
    // The page is bounded by it too, so that a version committed since `current` was read is not
    // shown under a total that does not count it.
    let total = current.content_version();
    let rows: Vec<VersionRow> =
        sqlx::query_as(&versions_query("ORDER BY version DESC LIMIT $3 OFFSET $4"))
            .bind(id)
            .bind(total)
            .bind(page.limit)
            .bind(page.offset())
            .fetch_all(&state.pool)
            .await?;
    let data = rows.into_iter().map(|row| row.view(id, &current)).collect();
    Ok(Json(Page::new(data, page, total)))
}

/// `GET /api/prompt-templates/{id}/versions/{version}`: one row read.
pub async fn get_version(
    State(state): State<AppState>,
    Caller(Authenticated { actor, .. }): Caller,
    consistency: ReadConsistency,
    Path((id, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let number: i64 = version
        .parse()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| ApiError::invalid("version", "must be a positive integer"))?;
    let current = load::<PromptTemplate>(&state, &actor, consistency, id).await?;
    let missing = || ApiError::NotFound {
        error: "Version not found".into(),
        details: format!(
            "prompt template {id} has {} versions; there is no version {number}",
            current.content_version()
        ),
    };
    if number > current.content_version() {
        return Err(missing());
    }
    let row: Option<VersionRow> = sqlx::query_as(&versions_query("AND version = $3"))
        .bind(id)
        .bind(current.content_version())
        .bind(number)
        .fetch_optional(&state.pool)
        .await?;
    // No row below the current version: the template was deleted since `current` was read.
    let row = row.ok_or_else(|| ApiError::not_found(PromptTemplate::INFO.label, id))?;
    Ok(Json(row.view(id, &current)))
}
