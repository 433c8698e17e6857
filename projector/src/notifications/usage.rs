//! Usage alerts: an organization's spend crossing a threshold of its budget. The `notifications`
//! projection keeps each organization's budget (`notification_budgets`) and, per organization, UTC
//! month and currency, what its finished executions cost and which thresholds were alerted already
//! (`notification_spend`), so that each threshold fires once a month: when spend reaches it, or when a
//! budget is set or lowered below the month's spend.

use std::collections::HashMap;

use chrono::NaiveDate;
use domain::aggregate::Aggregate;
use domain::budget::{self, Budget, BudgetEvent, Limits};
use domain::execution::ExecutionEvent;
use domain::RecordedEvent;
use sqlx::types::Json;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Cause, Occurrence};

type SpendKey = (Uuid, NaiveDate, String);

#[derive(Default)]
struct Spend {
    spent: f64,
    alerted: Vec<f64>,
}

/// The budgets and spend a batch touches, loaded before it and written back after.
pub struct UsageWatch {
    budgets: HashMap<Uuid, Option<Limits>>,
    spend: HashMap<SpendKey, Spend>,
}

/// What an event changes of usage, if anything.
enum UsageChange {
    Budget(Uuid, Option<Limits>),
    Spent(Uuid, String, f64),
}

fn usage_change(event: &RecordedEvent) -> anyhow::Result<Option<UsageChange>> {
    let (stream_type, key) = event.stream_id.split_once('-').unwrap_or_default();
    if stream_type == Budget::TYPE {
        let organization = key.parse()?;
        return Ok(Some(match event.decode::<BudgetEvent>()? {
            BudgetEvent::Set { limits, .. } => UsageChange::Budget(organization, Some(limits)),
            BudgetEvent::Removed {} => UsageChange::Budget(organization, None),
        }));
    }
    if event.event_type != "execution.succeeded" {
        return Ok(None);
    }
    let (
        ExecutionEvent::Succeeded {
            cost: Some(cost), ..
        },
        Some(organization),
    ) = (
        event.decode::<ExecutionEvent>()?,
        event.metadata.organization_id,
    )
    else {
        return Ok(None);
    };
    Ok(Some(UsageChange::Spent(
        organization,
        cost.currency,
        cost.total,
    )))
}

impl UsageWatch {
    /// Loads what `events` may change.
    pub async fn load(conn: &mut PgConnection, events: &[RecordedEvent]) -> anyhow::Result<Self> {
        let mut organizations = Vec::new();
        let mut periods = Vec::new();
        for event in events {
            let organization = match usage_change(event)? {
                Some(
                    UsageChange::Budget(organization, _) | UsageChange::Spent(organization, ..),
                ) => organization,
                None => continue,
            };
            organizations.push(organization);
            periods.push(budget::period(event.recorded_at));
        }
        let mut watch = UsageWatch {
            budgets: HashMap::new(),
            spend: HashMap::new(),
        };
        if organizations.is_empty() {
            return Ok(watch);
        }
        let budgets: Vec<(Uuid, Json<Limits>)> = sqlx::query_as(
            "SELECT organization_id, limits FROM notification_budgets WHERE organization_id = ANY($1)",
        )
        .bind(&organizations)
        .fetch_all(&mut *conn)
        .await?;
        watch.budgets = budgets.into_iter().map(|(id, l)| (id, Some(l.0))).collect();
        let spend: Vec<(Uuid, NaiveDate, String, f64, Vec<f64>)> = sqlx::query_as(
            "SELECT organization_id, period, currency, spent::float8, alerted FROM notification_spend \
             WHERE organization_id = ANY($1) AND period = ANY($2)",
        )
        .bind(&organizations)
        .bind(&periods)
        .fetch_all(&mut *conn)
        .await?;
        watch.spend = spend
            .into_iter()
            .map(|(org, period, currency, spent, alerted)| {
                ((org, period, currency), Spend { spent, alerted })
            })
            .collect();
        Ok(watch)
    }

    /// Follows `event`, and the usage alerts it raises.
    pub fn observe(&mut self, event: &RecordedEvent) -> anyhow::Result<Vec<Occurrence>> {
        let period = budget::period(event.recorded_at);
        let organization = match usage_change(event)? {
            None => return Ok(vec![]),
            Some(UsageChange::Budget(organization, limits)) => {
                self.budgets.insert(organization, limits);
                organization
            }
            Some(UsageChange::Spent(organization, currency, amount)) => {
                self.spend
                    .entry((organization, period, currency))
                    .or_default()
                    .spent += amount;
                organization
            }
        };
        let Some(Some(limits)) = self.budgets.get(&organization) else {
            return Ok(vec![]);
        };
        let spend = self
            .spend
            .entry((organization, period, limits.currency.clone()))
            .or_default();
        let mut raised = Vec::new();
        for &threshold in &limits.alert_at {
            if spend.spent >= limits.amount_at(threshold) && !spend.alerted.contains(&threshold) {
                spend.alerted.push(threshold);
                raised.push(Occurrence::usage(
                    organization,
                    period,
                    threshold,
                    limits,
                    spend.spent,
                ));
            }
        }
        Ok(raised)
    }

    /// Writes back what the batch changed.
    pub async fn save(self, conn: &mut PgConnection) -> anyhow::Result<()> {
        if self.budgets.is_empty() && self.spend.is_empty() {
            return Ok(());
        }
        let (set, removed): (Vec<_>, Vec<_>) = self
            .budgets
            .into_iter()
            .partition(|(_, limits)| limits.is_some());
        let removed: Vec<Uuid> = removed.into_iter().map(|(id, _)| id).collect();
        sqlx::query("DELETE FROM notification_budgets WHERE organization_id = ANY($1)")
            .bind(&removed)
            .execute(&mut *conn)
            .await?;
        let (ids, limits): (Vec<Uuid>, Vec<Json<Limits>>) = set
            .into_iter()
            .filter_map(|(id, limits)| Some((id, Json(limits?))))
            .unzip();
        sqlx::query(
            "INSERT INTO notification_budgets SELECT * FROM UNNEST($1::uuid[], $2::jsonb[]) \
             ON CONFLICT (organization_id) DO UPDATE SET limits = EXCLUDED.limits",
        )
        .bind(&ids)
        .bind(&limits)
        .execute(&mut *conn)
        .await?;
        let mut keys = (Vec::new(), Vec::new(), Vec::new());
        let (mut spent, mut alerted) = (Vec::new(), Vec::new());
        for ((organization, period, currency), spend) in self.spend {
            keys.0.push(organization);
            keys.1.push(period);
            keys.2.push(currency);
            spent.push(spend.spent);
            // One text per row: PostgreSQL has no arrays of arrays of differing lengths.
            alerted.push(
                spend
                    .alerted
                    .iter()
                    .map(f64::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        sqlx::query(
            "INSERT INTO notification_spend \
             SELECT o, p, c, s, coalesce(string_to_array(nullif(a, ''), ',')::float8[], '{}') \
             FROM UNNEST($1::uuid[], $2::date[], $3::text[], $4::float8[], $5::text[]) AS u(o, p, c, s, a) \
             ON CONFLICT (organization_id, period, currency) DO UPDATE SET \
               spent = EXCLUDED.spent, alerted = EXCLUDED.alerted",
        )
        .bind(&keys.0)
        .bind(&keys.1)
        .bind(&keys.2)
        .bind(&spent)
        .bind(&alerted)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

impl Occurrence {
    fn usage(
        organization: Uuid,
        period: NaiveDate,
        threshold: f64,
        limits: &Limits,
        spent: f64,
    ) -> Occurrence {
        let key = format!("usage/{organization}/{period}/{threshold}");
        let percent = (threshold * 100.0).round();
        Occurrence {
            id: Uuid::new_v5(&super::ALERTS, key.as_bytes()),
            kind: "usage",
            severity: if threshold >= 1.0 { 2 } else { 1 },
            organization_id: Some(organization),
            subject: format!("Spend reached {percent}% of the monthly budget"),
            cause: Cause::Once,
            detail: format!(
                "{spent:.2} {currency} spent in {month} of a budget of {limit:.2} {currency}{stop}",
                currency = limits.currency,
                month = period.format("%B %Y"),
                limit = limits.monthly_limit,
                stop = if limits.hard_stop && threshold >= 1.0 {
                    "; executions are stopped until the next month or a raised limit"
                } else {
                    ""
                },
            ),
            count: 1,
            source: serde_json::json!({
                "type": "budget",
                "period": period,
                "threshold": threshold,
                "monthlyLimit": limits.monthly_limit,
                "currency": limits.currency,
                "hardStop": limits.hard_stop,
            }),
        }
    }
}
