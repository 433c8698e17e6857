//! The operator surface's triage queue (feedback mode), System only, from the `feedback` read model:
//! `GET /api/v1/admin/feedback` (submissions, filtered, newest or most severe first, paginated),
//! `GET /api/v1/admin/feedback/{id}`, and `GET /api/v1/admin/feedback/groups` (the queue collapsed
//! into the groups that are triaged together, with their counts per workflow state).

use axum::extract::{Path, State};
use axum::Json;
use contracts::read_models::{feedback_count, FEEDBACK, FEEDBACK_ALL};
use domain::feedback::classify::{ProbeGroup, Quality};
use domain::feedback::{Severity, TriageState};
use domain::{Action, Actor, Resource};
use http_layer::ApiError;
use identity::auth::Authenticated;
use serde_json::Value;
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use crate::consistency::ReadConsistency;
use crate::extract::{parse_id, Caller, Params, TimeRange};
use crate::pagination::{contains_pattern, rows_and_total, Page, PageRequest};
use crate::AppState;

/// A submission's view: the kept one with its group.
const VIEW: &str = "data || jsonb_build_object('groupId', group_id)";

fn operator(actor: &Actor) -> Result<(), ApiError> {
    actor.authorize_platform(Resource::Operations, Action::Read)?;
    Ok(())
}

/// The order of a list: `newest` (default) or `severity` (most severe first, newest first within).
fn order(params: &Params) -> Result<&'static str, ApiError> {
    match params.get("sort") {
        None | Some("newest") => Ok(" ORDER BY created_at DESC, id DESC"),
        Some("severity") => Ok(" ORDER BY severity DESC, created_at DESC, id DESC"),
        Some(_) => Err(ApiError::invalid("sort", "must be newest or severity")),
    }
}

/// What a list of submissions is narrowed to.
struct Filter {
    state: Option<TriageState>,
    group: Option<ProbeGroup>,
    quality: Option<Quality>,
    severity: Option<Severity>,
    source: Option<&'static str>,
    organization: Option<Uuid>,
    group_id: Option<Uuid>,
    pattern: Option<String>,
    range: TimeRange,
}

impl Filter {
    fn parse(params: &Params) -> Result<Filter, ApiError> {
        match params.get("mode") {
            None | Some("feedback") => {}
            Some(_) => return Err(ApiError::invalid("mode", "must be feedback")),
        }
        let states = TriageState::ALL.map(TriageState::as_str);
        let groups = ProbeGroup::ALL.map(ProbeGroup::as_str);
        let qualities = Quality::ALL.map(Quality::as_str);
        let severities = Severity::ALL.map(Severity::as_str);
        Ok(Filter {
            state: params.one_of("state", &states, TriageState::parse)?,
            group: params.one_of("group", &groups, ProbeGroup::parse)?,
            quality: params.one_of("quality", &qualities, Quality::parse)?,
            severity: params.one_of("severity", &severities, Severity::parse)?,
            source: params.named("source", &["user", "probe"])?,
            organization: params.uuid("organizationId")?,
            group_id: params.uuid("groupId")?,
            pattern: params.search()?.map(contains_pattern),
            range: params.time_range()?,
        })
    }

    /// The kept count that is this filter's exact total, when it filters by at most one of the
    /// counted fields and by nothing else.
    fn kept_count(&self) -> Option<String> {
        if self.pattern.is_some() || self.group_id.is_some() || self.range != (None, None) {
            return None;
        }
        let scopes: Vec<String> = [
            self.state.map(|s| feedback_count("state", s.as_str())),
            self.group.map(|g| feedback_count("group", g.as_str())),
            self.quality.map(|q| feedback_count("quality", q.as_str())),
            self.severity
                .map(|s| feedback_count("severity", &s.rank().to_string())),
            self.source.map(|s| feedback_count("source", s)),
            self.organization
                .map(|o| feedback_count("organization", &o.to_string())),
        ]
        .into_iter()
        .flatten()
        .collect();
        match scopes.as_slice() {
            [] => Some(FEEDBACK_ALL.to_owned()),
            [scope] => Some(scope.clone()),
            _ => None,
        }
    }

    fn push_conditions(&self, query: &mut QueryBuilder<'_, Postgres>) {
        query.push(" WHERE true");
        if let Some(state) = self.state {
            query.push(" AND state = ").push_bind(state.as_str());
        }
        if let Some(group) = self.group {
            query
                .push(" AND groups @> ARRAY[")
                .push_bind(group.as_str())
                .push("]");
        }
        if let Some(quality) = self.quality {
            query.push(" AND quality = ").push_bind(quality.as_str());
        }
        if let Some(severity) = self.severity {
            query.push(" AND severity = ").push_bind(severity.rank());
        }
        if let Some(source) = self.source {
            query.push(" AND source = ").push_bind(source);
        }
        if let Some(organization) = self.organization {
            query
                .push(" AND organization_id = ")
                .push_bind(organization);
        }
        if let Some(group_id) = self.group_id {
            query.push(" AND group_id = ").push_bind(group_id);
        }
        if let Some(pattern) = &self.pattern {
            query.push(" AND message ILIKE ").push_bind(pattern.clone());
        }
        if let Some(from) = self.range.0 {
            query.push(" AND created_at >= ").push_bind(from);
        }
        if let Some(to) = self.range.1 {
            query.push(" AND created_at < ").push_bind(to);
        }
    }
}

pub async fn list(
    State(state): State<AppState>,
    Caller(Authenticated { actor, .. }): Caller,
    consistency: ReadConsistency,
    params: Params,
) -> Result<Json<Page<Value>>, ApiError> {
    operator(&actor)?;
    let filter = Filter::parse(&params)?;
    let order = order(&params)?;
    let page = PageRequest::parse(params.get("page"), params.get("limit"))?;
    state.consistency.wait(FEEDBACK, consistency).await?;
    // The page's ids first, from an index alone (the skipped rows are never read or built), then its
    // rows.
    let mut rows = QueryBuilder::new(format!(
        "SELECT {VIEW} FROM read_models.feedback WHERE id IN (SELECT id FROM read_models.feedback"
    ));
    filter.push_conditions(&mut rows);
    rows.push(order)
        .push(" LIMIT ")
        .push_bind(page.limit)
        .push(" OFFSET ")
        .push_bind(page.offset())
        .push(")")
        .push(order);
    let total = match filter.kept_count() {
        Some(scope) => {
            let mut total = QueryBuilder::new(
                "SELECT coalesce((SELECT count FROM read_models.feedback_counts WHERE scope = ",
            );
            total.push_bind(scope).push("), 0)");
            total
        }
        None => {
            let mut total = QueryBuilder::new("SELECT count(*) FROM read_models.feedback");
            filter.push_conditions(&mut total);
            total
        }
    };
    let (rows, total) = rows_and_total(&state.pool, rows, total).await?;
    Ok(Json(Page::new(rows, page, total)))
}

pub async fn get(
    State(state): State<AppState>,
    Caller(Authenticated { actor, .. }): Caller,
    consistency: ReadConsistency,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    operator(&actor)?;
    let id = parse_id(&id)?;
    state.consistency.wait(FEEDBACK, consistency).await?;
    let row: Option<Value> = sqlx::query_scalar(&format!(
        "SELECT {VIEW} FROM read_models.feedback WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&state.pool)
    .await?;
    row.map(Json)
        .ok_or_else(|| ApiError::not_found("Feedback", id))
}

/// The groups, newest activity (or most severe) first, with their counts per state and their newest
/// submission's message. `state` keeps the groups in that state (the least advanced of their items).
pub async fn groups(
    State(state): State<AppState>,
    Caller(Authenticated { actor, .. }): Caller,
    consistency: ReadConsistency,
    params: Params,
) -> Result<Json<Page<Value>>, ApiError> {
    operator(&actor)?;
    let states = TriageState::ALL.map(TriageState::as_str);
    let group_state = params.one_of("state", &states, TriageState::parse)?;
    let kind = params.named("kind", &["single", "duplicate", "burst"])?;
    let order = match params.get("sort") {
        None | Some("newest") => " ORDER BY g.last_at DESC, g.id DESC",
        Some("severity") => " ORDER BY g.severity DESC, g.last_at DESC, g.id DESC",
        Some(_) => return Err(ApiError::invalid("sort", "must be newest or severity")),
    };
    let page = PageRequest::parse(params.get("page"), params.get("limit"))?;
    state.consistency.wait(FEEDBACK, consistency).await?;
    let conditions = |query: &mut QueryBuilder<'_, Postgres>| {
        query.push(" WHERE true");
        if let Some(group_state) = group_state {
            query
                .push(" AND g.state = ")
                .push_bind(group_state.as_str());
        }
        if let Some(kind) = kind {
            query.push(" AND g.kind = ").push_bind(kind);
        }
    };
    let mut rows = QueryBuilder::new(
        "SELECT jsonb_build_object('id', g.id, 'kind', g.kind, 'fingerprint', g.fingerprint, \
           'origin', g.origin, 'items', g.items, 'state', g.state, \
           'severity', (ARRAY['low','medium','high','critical'])[g.severity + 1], \
           'counts', jsonb_build_object('open', g.open, 'triaged', g.triaged, \
             'in_progress', g.in_progress, 'done', g.done, 'archived', g.archived), \
           'firstAt', api_time(g.first_at), 'lastAt', api_time(g.last_at), \
           'latest', (SELECT jsonb_build_object('id', f.id, 'message', f.message) \
                      FROM read_models.feedback f WHERE f.group_id = g.id \
                      ORDER BY f.created_at DESC, f.id DESC LIMIT 1)) \
         FROM read_models.feedback_groups g WHERE g.id IN (SELECT g.id FROM read_models.feedback_groups g",
    );
    conditions(&mut rows);
    rows.push(order)
        .push(" LIMIT ")
        .push_bind(page.limit)
        .push(" OFFSET ")
        .push_bind(page.offset())
        .push(")")
        .push(order);
    let mut total = QueryBuilder::new("SELECT count(*) FROM read_models.feedback_groups g");
    conditions(&mut total);
    let (rows, total) = rows_and_total(&state.pool, rows, total).await?;
    Ok(Json(Page::new(rows, page, total)))
}
