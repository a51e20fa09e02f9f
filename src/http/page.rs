//! Keyset pagination: lists are ordered by id, newest first, and a cursor is
//! the last id a page returned. New rows get larger ids, so paging while rows
//! are added never repeats or skips one (an offset would).

use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{Error, Result};
use crate::storage::query::Param;
use crate::storage::Filter;

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 1000;

/// Which page a list request asks for.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest {
    pub limit: i64,
    /// Only rows with an id below this one.
    pub before_id: Option<i64>,
}

impl PageRequest {
    pub fn parse(limit: Option<i64>, cursor: Option<&str>) -> Result<Self> {
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(Error::BadRequest(format!(
                "`limit` must be between 1 and {MAX_LIMIT}"
            )));
        }
        let before_id = match cursor {
            None | Some("") => None,
            Some(text) => Some(decode_cursor(text)?),
        };
        Ok(Self { limit, before_id })
    }

    /// Rows to fetch: one more than the page, to learn whether another follows.
    pub fn fetch_limit(&self) -> i64 {
        self.limit + 1
    }
}

/// One page of a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from up to `fetch_limit` rows, newest first.
    pub fn from_rows(mut rows: Vec<T>, request: PageRequest, id_of: impl Fn(&T) -> i64) -> Self {
        let more = rows.len() as i64 > request.limit;
        rows.truncate(request.limit as usize);
        let next_cursor = match rows.last() {
            Some(last) if more => Some(encode_cursor(id_of(last))),
            _ => None,
        };
        Page {
            items: rows,
            next_cursor,
        }
    }
}

/// Cursors are opaque to clients; today they carry the boundary id.
fn encode_cursor(id: i64) -> String {
    format!("k{id}")
}

fn decode_cursor(text: &str) -> Result<i64> {
    text.strip_prefix('k')
        .and_then(|digits| digits.parse::<i64>().ok())
        .filter(|id| *id > 0)
        .ok_or_else(|| Error::BadRequest("`cursor` is not one this server issued".to_string()))
}

/// One page of `select` (a `SELECT … FROM …` without `WHERE`), filtered by
/// `filter`, newest first by the integer column `key`: the keyset query
/// every list shares. `read` turns a row into an item, `key_of` gives an
/// item's key back for the cursor.
pub async fn fetch_page<T>(
    pool: &sqlx::AnyPool,
    select: &str,
    key: &str,
    mut filter: Filter,
    page: PageRequest,
    read: impl Fn(&sqlx::any::AnyRow) -> Result<T>,
    key_of: impl Fn(&T) -> i64,
) -> Result<Page<T>> {
    filter.optional(&format!("{key} < ?"), page.before_id.map(Param::from));
    let sql = format!(
        "{select}{} ORDER BY {key} DESC LIMIT {}",
        filter.where_clause(),
        filter.next_placeholder()
    );
    let rows = sqlx::query_with(&sql, filter.arguments(&[Param::Int(page.fetch_limit())]))
        .fetch_all(pool)
        .await?;

    let items = rows.iter().map(read).collect::<Result<Vec<_>>>()?;
    Ok(Page::from_rows(items, page, key_of))
}
