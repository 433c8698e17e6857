//! `page`/`limit` parameters and the `{data, pagination}` envelope of list responses (contract §5,
//! `events/docs/contract.md`), and running a page's query beside its total's.

use http_layer::ApiError;
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgPool, Postgres, QueryBuilder};

pub const DEFAULT_LIMIT: i64 = 10;
pub const MAX_LIMIT: i64 = 100;

#[derive(Debug, Clone, Copy)]
pub struct PageRequest {
    pub page: i64,
    pub limit: i64,
}

impl PageRequest {
    pub fn parse(page: Option<&str>, limit: Option<&str>) -> Result<Self, ApiError> {
        let page = match page {
            None => 1,
            Some(raw) => raw
                .parse()
                .ok()
                .filter(|p| *p >= 1)
                .ok_or_else(|| ApiError::invalid("page", "must be an integer of at least 1"))?,
        };
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(raw) => raw
                .parse()
                .ok()
                .filter(|l| (1..=MAX_LIMIT).contains(l))
                .ok_or_else(|| {
                    ApiError::invalid("limit", format!("must be an integer from 1 to {MAX_LIMIT}"))
                })?,
        };
        Ok(PageRequest { page, limit })
    }

    pub fn offset(&self) -> i64 {
        (self.page - 1).saturating_mul(self.limit)
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pagination {
    pub page: i64,
    pub limit: i64,
    pub total: i64,
    pub total_pages: i64,
}

#[derive(Debug, Serialize)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub pagination: Pagination,
}

impl<T> Page<T> {
    /// One page of `rows`, converted to their read shape.
    pub fn new<R: Into<T>>(rows: Vec<R>, request: PageRequest, total: i64) -> Self {
        Page {
            data: rows.into_iter().map(Into::into).collect(),
            pagination: Pagination {
                page: request.page,
                limit: request.limit,
                total,
                total_pages: (total + request.limit - 1) / request.limit,
            },
        }
    }
}

/// A `search` term as an ILIKE pattern matching it as a substring, with `%`, `_` and `\` taken
/// literally.
pub fn contains_pattern(search: &str) -> String {
    let mut pattern = String::with_capacity(search.len() + 2);
    pattern.push('%');
    for c in search.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// The page `page` of what `rows` selects (ordered; its `LIMIT` and `OFFSET` are added here) with the
/// total `total` counts.
pub async fn page_of(
    pool: &PgPool,
    mut rows: QueryBuilder<'_, Postgres>,
    total: QueryBuilder<'_, Postgres>,
    page: PageRequest,
) -> Result<Page<Value>, ApiError> {
    rows.push(" LIMIT ")
        .push_bind(page.limit)
        .push(" OFFSET ")
        .push_bind(page.offset());
    let (rows, total) = rows_and_total(pool, rows, total).await?;
    Ok(Page::new(rows, page, total))
}

/// A page's rows (one JSON value each) and its total, each from its own query, run at once on two
/// connections.
pub async fn rows_and_total(
    pool: &PgPool,
    mut rows: QueryBuilder<'_, Postgres>,
    mut total: QueryBuilder<'_, Postgres>,
) -> Result<(Vec<Value>, i64), ApiError> {
    let (rows, total) = tokio::try_join!(
        rows.build_query_scalar::<Value>().fetch_all(pool),
        total.build_query_scalar::<i64>().fetch_one(pool),
    )?;
    Ok((rows, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_pages_are_checked() {
        assert_eq!(PageRequest::parse(None, None).unwrap().limit, 10);
        assert_eq!(
            PageRequest::parse(Some("3"), Some("100")).unwrap().offset(),
            200
        );
        for (page, limit) in [
            (Some("0"), None),
            (Some("x"), None),
            (None, Some("101")),
            (None, Some("0")),
            (None, Some("-1")),
        ] {
            assert!(
                PageRequest::parse(page, limit).is_err(),
                "{page:?} {limit:?}"
            );
        }
    }

    #[test]
    fn total_pages_round_up() {
        let request = PageRequest::parse(None, Some("10")).unwrap();
        assert_eq!(
            Page::<()>::new(Vec::<()>::new(), request, 42)
                .pagination
                .total_pages,
            5
        );
        assert_eq!(
            Page::<()>::new(Vec::<()>::new(), request, 0)
                .pagination
                .total_pages,
            0
        );
    }

    #[test]
    fn search_wildcards_are_literal() {
        assert_eq!(contains_pattern(r"50%_a\b"), r"%50\%\_a\\b%");
    }
}
