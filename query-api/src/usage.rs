//! Usage and spend control (System only):
//! - `GET /api/v1/admin/usage`: executions, failures, tokens and cost per currency, from
//!   `execution_totals` (the `executions` projection's sums per organization, UTC day, environment,
//!   model and currency), filtered and grouped by day, week, month, model, organization or
//!   environment, with the whole range's total. An execution counts on the UTC day it finished. A
//!   report over whole months not grouped by day or week reads the monthly sums instead
//!   (`execution_totals_monthly`), the same numbers in a thirtieth of the rows; one over time with no
//!   organization, environment or model filter reads the platform's daily sums
//!   (`execution_totals_platform`).
//! - `GET /api/v1/admin/organizations/{id}/budget`: an organization's budget.
//! - `GET /api/v1/admin/billing`: billing health, every organization with a budget by what it has
//!   spent this UTC month against it, the most spent first.
//!
//! Budgets and this month's spend are read from what the write path keeps with each write
//! (`organization_budgets`, `organization_spend`), so they are exact as soon as a write is answered.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::Json;
use chrono::{Datelike, NaiveDate, NaiveTime, Utc};
use contracts::read_models::EXECUTIONS;
use contracts::views::BudgetView;
use domain::budget::{self, Limits};
use domain::{Action, Resource};
use http_layer::ApiError;
use identity::auth::Authenticated;
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use crate::consistency::ReadConsistency;
use crate::extract::{parse_id, Caller, Params};
use crate::pagination::{page_of, Page, PageRequest};
use crate::AppState;

/// What usage can be grouped by: the SQL of each group over `execution_totals t` (or the monthly sums,
/// whose `day` is the month's first), and of its key as the API shows it over the group `g.grp`. Rows
/// are grouped by the plain column and the key formatted once per group, not once per row.
const GROUPS: [(&str, &str, &str); 6] = [
    ("day", "t.day", "g.grp::text"),
    ("week", "date_trunc('week', t.day)", "g.grp::date::text"),
    (
        "month",
        "date_trunc('month', t.day)",
        "to_char(g.grp, 'YYYY-MM')",
    ),
    ("model", "t.model_id", "g.grp::text"),
    ("organization", "t.organization_id", "g.grp::text"),
    ("environment", "t.environment_id", "g.grp::text"),
];

/// The sums of one group, or of the whole range.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    /// The organization's, environment's or model's name, when grouped by one.
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    executions: i64,
    failures: i64,
    input_tokens: i64,
    output_tokens: i64,
    /// Per currency; executions of models without prices cost nothing.
    cost: BTreeMap<String, f64>,
}

impl Usage {
    fn add(&mut self, row: &UsageRow) {
        self.executions += row.executions;
        self.failures += row.failures;
        self.input_tokens += row.input_tokens;
        self.output_tokens += row.output_tokens;
        if !row.currency.is_empty() {
            *self.cost.entry(row.currency.clone()).or_default() += row.cost;
        }
    }
}

#[derive(sqlx::FromRow)]
struct UsageRow {
    key: String,
    name: Option<String>,
    currency: String,
    executions: i64,
    failures: i64,
    input_tokens: i64,
    output_tokens: i64,
    cost: f64,
}

pub async fn usage(
    State(state): State<AppState>,
    Caller(Authenticated { actor, .. }): Caller,
    consistency: ReadConsistency,
    params: Params,
) -> Result<Json<Value>, ApiError> {
    actor.authorize_platform(Resource::Operations, Action::Read)?;
    let names: Vec<&str> = GROUPS.iter().map(|(name, ..)| *name).collect();
    let (group_by, group, key) = params
        .one_of("groupBy", &names, |raw| {
            GROUPS.iter().find(|(n, ..)| *n == raw)
        })?
        .copied()
        .unwrap_or(GROUPS[0]);
    let organization = params.uuid("organizationId")?;
    let environment = params.uuid("environmentId")?;
    let model = params.uuid("modelId")?;
    let (from, to) = (day(&params, "from")?, day(&params, "to")?);
    if let (Some(from), Some(to)) = (from, to) {
        if from > to {
            return Err(ApiError::invalid("from", "must not be after to"));
        }
    }
    state.consistency.wait(EXECUTIONS, consistency).await?;
    let over_time = matches!(group_by, "day" | "week" | "month");
    let platform_wide = organization.is_none() && environment.is_none() && model.is_none();
    let monthly = !matches!(group_by, "day" | "week")
        && [from, to].iter().flatten().all(|bound| bound.day() == 1);
    let (totals, group) = if over_time && platform_wide {
        ("read_models.execution_totals_platform t", group)
    } else if monthly {
        (
            "(SELECT month AS day, * FROM read_models.execution_totals_monthly) t",
            // Already the month's first day.
            if group_by == "month" { "t.day" } else { group },
        )
    } else {
        ("read_models.execution_totals t", group)
    };
    // Where a group of resources finds its name (one join for the page, not a lookup per group).
    let (name, names) = match group_by {
        "organization" => (
            "n.name",
            " LEFT JOIN read_models.organizations n ON n.id = g.grp",
        ),
        "environment" => (
            "n.name",
            " LEFT JOIN read_models.environments n ON n.id = g.grp",
        ),
        "model" => ("n.name", " LEFT JOIN read_models.catalog n ON n.id = g.grp"),
        _ => ("NULL::text", ""),
    };
    let mut query = QueryBuilder::<Postgres>::new(format!(
        "SELECT {key} AS key, g.currency, g.executions, g.failures, g.input_tokens, g.output_tokens, g.cost, \
           {name} AS name FROM (SELECT {group} AS grp, t.currency, \
           sum(t.executions)::int8 AS executions, sum(t.failures)::int8 AS failures, \
           sum(t.input_tokens)::int8 AS input_tokens, sum(t.output_tokens)::int8 AS output_tokens, \
           sum(t.cost)::float8 AS cost \
         FROM {totals} WHERE true"
    ));
    if let Some(organization) = organization {
        query
            .push(" AND t.organization_id = ")
            .push_bind(organization);
    }
    if let Some(environment) = environment {
        query
            .push(" AND t.environment_id = ")
            .push_bind(environment);
    }
    if let Some(model) = model {
        query.push(" AND t.model_id = ").push_bind(model);
    }
    if let Some(from) = from {
        query.push(" AND t.day >= ").push_bind(from);
    }
    if let Some(to) = to {
        query.push(" AND t.day < ").push_bind(to);
    }
    query
        .push(" GROUP BY 1, 2) g")
        .push(names)
        .push(" ORDER BY g.grp, g.currency");
    let rows: Vec<UsageRow> = query.build_query_as().fetch_all(&state.pool).await?;
    let mut total = Usage::default();
    let mut groups: Vec<Usage> = Vec::new();
    for row in &rows {
        total.add(row);
        match groups.last_mut() {
            Some(group) if group.key.as_deref() == Some(&row.key) => group.add(row),
            _ => {
                let mut group = Usage {
                    key: Some(row.key.clone()),
                    name: row.name.clone(),
                    ..Usage::default()
                };
                group.add(row);
                groups.push(group);
            }
        }
    }
    Ok(Json(json!({
        "groupBy": group_by,
        "from": from,
        "to": to,
        "groups": groups,
        "total": total,
    })))
}

/// A day bound: a date (`2026-12-01`) or an RFC 3339 time at a UTC midnight, since usage is counted
/// per UTC day.
fn day(params: &Params, name: &str) -> Result<Option<NaiveDate>, ApiError> {
    let Some(raw) = params.get(name) else {
        return Ok(None);
    };
    if let Ok(date) = raw.parse::<NaiveDate>() {
        return Ok(Some(date));
    }
    match params.time(name) {
        Ok(Some(at)) if at.time() == NaiveTime::MIN => Ok(Some(at.date_naive())),
        _ => Err(ApiError::invalid(
            name,
            format!("{raw:?} is not a date (YYYY-MM-DD) or a UTC midnight: usage is counted per UTC day"),
        )),
    }
}

#[derive(sqlx::FromRow)]
struct BudgetRow {
    organization_id: Uuid,
    monthly_limit: f64,
    currency: String,
    alert_at: Vec<f64>,
    hard_stop: bool,
    updated_at: chrono::DateTime<Utc>,
}

impl BudgetRow {
    fn view(self) -> BudgetView {
        let limits = Limits {
            monthly_limit: self.monthly_limit,
            currency: self.currency,
            alert_at: self.alert_at,
            hard_stop: self.hard_stop,
        };
        BudgetView::new(self.organization_id, &limits, self.updated_at)
    }
}

pub async fn budget(
    State(state): State<AppState>,
    Caller(Authenticated { actor, .. }): Caller,
    Path(id): Path<String>,
) -> Result<Json<BudgetView>, ApiError> {
    actor.authorize_platform(Resource::Operations, Action::Read)?;
    let id = parse_id(&id)?;
    let row: Option<BudgetRow> = sqlx::query_as(
        "SELECT organization_id, monthly_limit::float8, currency, alert_at, hard_stop, updated_at \
         FROM organization_budgets WHERE organization_id = $1",
    )
    .bind(id)
    .fetch_optional(&state.pool)
    .await?;
    row.map(|row| Json(row.view()))
        .ok_or_else(|| ApiError::NotFound {
            error: "Budget not found".into(),
            details: format!("organization {id} has no budget"),
        })
}

const BILLING_STATES: [&str; 3] = ["ok", "alerting", "exhausted"];

pub async fn billing(
    State(state): State<AppState>,
    Caller(Authenticated { actor, .. }): Caller,
    params: Params,
) -> Result<Json<Page<Value>>, ApiError> {
    actor.authorize_platform(Resource::Operations, Action::Read)?;
    let billing_state = params.named("state", &BILLING_STATES)?;
    let page = PageRequest::parse(params.get("page"), params.get("limit"))?;
    let period = budget::period(Utc::now());
    // Each budgeted organization's spend this month in its budget's currency, and where that stands.
    let from = "FROM (SELECT b.*, o.name, coalesce(s.spent, 0) AS spent, \
           CASE WHEN coalesce(s.spent, 0) >= b.monthly_limit THEN 'exhausted' \
                WHEN coalesce(s.spent, 0) >= b.monthly_limit * (SELECT min(a) FROM unnest(b.alert_at) a) \
                THEN 'alerting' ELSE 'ok' END AS state \
         FROM organization_budgets b \
         LEFT JOIN read_models.organizations o ON o.id = b.organization_id \
         LEFT JOIN organization_spend s ON s.organization_id = b.organization_id \
           AND s.currency = b.currency AND s.period = ";
    let conditions = |query: &mut QueryBuilder<'_, Postgres>| {
        query.push(from).push_bind(period).push(") x WHERE true");
        if let Some(billing_state) = billing_state {
            query.push(" AND x.state = ").push_bind(billing_state);
        }
    };
    let mut rows = QueryBuilder::new(
        "SELECT jsonb_build_object('organizationId', x.organization_id, \
           'organization', jsonb_build_object('name', x.name), \
           'period', to_char(",
    );
    rows.push_bind(period).push(
        "::date, 'YYYY-MM'), 'monthlyLimit', x.monthly_limit::float8, 'currency', x.currency, \
           'spent', x.spent::float8, 'used', round((x.spent / x.monthly_limit)::numeric, 4)::float8, \
           'alertAt', x.alert_at, 'hardStop', x.hard_stop, 'state', x.state) ",
    );
    conditions(&mut rows);
    rows.push(" ORDER BY x.spent / x.monthly_limit DESC, x.organization_id");
    let mut total = QueryBuilder::new("SELECT count(*) ");
    conditions(&mut total);
    Ok(Json(page_of(&state.pool, rows, total, page).await?))
}
