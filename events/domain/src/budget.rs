//! An organization's monthly budget (`budget-<organization id>`), set by operators: a limit in one
//! currency, the fractions of it at which a usage alert is raised, and whether executions stop once it
//! is spent (`402` until the next UTC month or a raised limit). Spend is what finished executions
//! cost, in the budget's currency, in the UTC month they finished in; spend in another currency does
//! not count against it.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::aggregate::{Aggregate, DomainError};

/// The most thresholds a budget may have.
pub const MAX_THRESHOLDS: usize = 10;

/// The largest threshold, as a fraction of the limit (alerting at ten times the budget is the most
/// anyone has a use for).
pub const MAX_THRESHOLD: f64 = 10.0;

/// The largest limit accepted: beyond it an amount no longer has cent precision in a double.
pub const MAX_LIMIT: f64 = 1e12;

/// A budget as set: checked by [`Limits::checked`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Limits {
    /// The most the organization may spend in a UTC month, in `currency`.
    pub monthly_limit: f64,
    /// An ISO 4217 code, as models' prices state it (`USD`).
    pub currency: String,
    /// Fractions of the limit at which a usage alert is raised, ascending, without repeats.
    #[serde(default = "default_alert_at")]
    pub alert_at: Vec<f64>,
    /// Whether executions are refused (`402`) once the month's spend reaches the limit.
    #[serde(default)]
    pub hard_stop: bool,
}

fn default_alert_at() -> Vec<f64> {
    vec![0.5, 0.8, 1.0]
}

impl Limits {
    /// The limits with their thresholds sorted and deduplicated, or why they are refused.
    pub fn checked(mut self) -> Result<Limits, DomainError> {
        if !(self.monthly_limit.is_finite()
            && self.monthly_limit > 0.0
            && self.monthly_limit <= MAX_LIMIT)
        {
            return Err(DomainError::invalid(
                "monthlyLimit",
                format!("must be a number greater than 0 and at most {MAX_LIMIT:e}"),
            ));
        }
        if !(self.currency.len() == 3 && self.currency.bytes().all(|b| b.is_ascii_uppercase())) {
            return Err(DomainError::invalid(
                "currency",
                "must be an ISO 4217 code: three capital letters, such as USD",
            ));
        }
        if let Some(bad) = self
            .alert_at
            .iter()
            .find(|t| !(t.is_finite() && **t > 0.0 && **t <= MAX_THRESHOLD))
        {
            return Err(DomainError::invalid(
                "alertAt",
                format!("{bad} is not a fraction of the limit greater than 0 and at most {MAX_THRESHOLD}"),
            ));
        }
        self.alert_at.sort_by(f64::total_cmp);
        self.alert_at.dedup();
        if self.alert_at.len() > MAX_THRESHOLDS {
            return Err(DomainError::invalid(
                "alertAt",
                format!("at most {MAX_THRESHOLDS} thresholds"),
            ));
        }
        Ok(self)
    }

    /// The amount at which the fraction `threshold` of the limit is reached.
    pub fn amount_at(&self, threshold: f64) -> f64 {
        self.monthly_limit * threshold
    }
}

/// The first day of the UTC month `at` falls in: the budget period it counts in.
pub fn period(at: DateTime<Utc>) -> NaiveDate {
    NaiveDate::from_ymd_opt(at.year(), at.month(), 1).expect("the first of a month exists")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "data", rename_all_fields = "camelCase")]
pub enum BudgetEvent {
    #[serde(rename = "budget.set")]
    Set {
        organization_id: uuid::Uuid,
        limits: Limits,
    },
    #[serde(rename = "budget.removed")]
    Removed {},
}

#[derive(Debug, Clone, PartialEq)]
pub enum BudgetCommand {
    Set {
        organization_id: uuid::Uuid,
        limits: Limits,
    },
    Remove,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    pub limits: Option<Limits>,
    pub updated_at: Option<DateTime<Utc>>,
}

impl Aggregate for Budget {
    const TYPE: &'static str = "budget";
    type Event = BudgetEvent;
    type Command = BudgetCommand;

    fn apply(&mut self, event: &BudgetEvent, at: DateTime<Utc>) {
        self.limits = match event {
            BudgetEvent::Set { limits, .. } => Some(limits.clone()),
            BudgetEvent::Removed {} => None,
        };
        self.updated_at = Some(at);
    }

    /// Setting the budget it has, or removing none, records nothing.
    fn decide(&self, command: BudgetCommand) -> Result<Vec<BudgetEvent>, DomainError> {
        match command {
            BudgetCommand::Set {
                organization_id,
                limits,
            } => {
                let limits = limits.checked()?;
                if self.limits.as_ref() == Some(&limits) {
                    return Ok(vec![]);
                }
                Ok(vec![BudgetEvent::Set {
                    organization_id,
                    limits,
                }])
            }
            BudgetCommand::Remove if self.limits.is_none() => Err(DomainError::NotFound),
            BudgetCommand::Remove => Ok(vec![BudgetEvent::Removed {}]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(monthly_limit: f64, alert_at: Vec<f64>) -> Limits {
        Limits {
            monthly_limit,
            currency: "USD".into(),
            alert_at,
            hard_stop: true,
        }
    }

    #[test]
    fn thresholds_are_sorted_and_deduplicated() {
        let checked = limits(100.0, vec![1.0, 0.5, 0.8, 0.5]).checked().unwrap();
        assert_eq!(checked.alert_at, vec![0.5, 0.8, 1.0]);
    }

    #[test]
    fn nonsense_is_refused_naming_the_field() {
        let field = |l: Limits| match l.checked() {
            Err(DomainError::Invalid { field, .. }) => field,
            other => panic!("accepted: {other:?}"),
        };
        assert_eq!(field(limits(0.0, vec![])), "monthlyLimit");
        assert_eq!(field(limits(f64::NAN, vec![])), "monthlyLimit");
        assert_eq!(field(limits(1e13, vec![])), "monthlyLimit");
        assert_eq!(field(limits(10.0, vec![0.0])), "alertAt");
        assert_eq!(field(limits(10.0, vec![11.0])), "alertAt");
        assert_eq!(
            field(limits(10.0, (1..=11).map(f64::from).collect())),
            "alertAt"
        );
        let mut lower = limits(10.0, vec![]);
        lower.currency = "usd".into();
        assert_eq!(field(lower), "currency");
    }

    #[test]
    fn setting_the_same_budget_records_nothing_and_removing_none_is_not_found() {
        let mut budget = Budget::default();
        let set = |l: Limits| BudgetCommand::Set {
            organization_id: uuid::Uuid::nil(),
            limits: l,
        };
        assert_eq!(
            budget.decide(BudgetCommand::Remove),
            Err(DomainError::NotFound)
        );
        let events = budget.decide(set(limits(10.0, vec![0.5]))).unwrap();
        budget.apply(&events[0], Utc::now());
        assert!(budget
            .decide(set(limits(10.0, vec![0.5])))
            .unwrap()
            .is_empty());
        assert_eq!(
            budget.decide(set(limits(20.0, vec![0.5]))).unwrap().len(),
            1
        );
    }

    #[test]
    fn the_period_is_the_utc_month() {
        let at = "2026-12-31T23:59:59.999Z".parse().unwrap();
        assert_eq!(period(at), NaiveDate::from_ymd_opt(2026, 12, 1).unwrap());
    }
}
