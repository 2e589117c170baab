//! Paging, sorting and searching of the API's lists.

use serde_json::{Value as Json, json};
use spindle_http::{ApiError, ApiRequest, ApiResponse, ErrorDetail};
use spindle_store::{OrgScoped, Value};

/// Largest page a list returns.
pub const MAX_LIMIT: i64 = 100;

/// `limit`, `offset`, `sort_by` and `sort_order` of a list request.
pub struct Page {
    limit: i64,
    offset: i64,
    order_by: &'static str,
    descending: bool,
}

impl Page {
    /// Reads the paging parameters; `sortable` lists the accepted `sort_by`
    /// columns, the first being the default. Bad values answer 400 naming each.
    pub fn parse(request: &ApiRequest, sortable: &[&'static str]) -> Result<Self, ApiError> {
        let mut problems = Vec::new();
        let mut number = |name: &str, default: i64, max: i64| match request.query_param(name) {
            None => default,
            Some(text) => text
                .parse()
                .ok()
                .filter(|n| (if name == "limit" { 1 } else { 0 }..=max).contains(n))
                .unwrap_or_else(|| {
                    let min = if name == "limit" { 1 } else { 0 };
                    problems.push(ErrorDetail::new(
                        format!("query.{name}"),
                        format!("must be an integer from {min} to {max}"),
                    ));
                    default
                }),
        };
        let limit = number("limit", 20, MAX_LIMIT);
        let offset = number("offset", 0, 1_000_000);
        let default_order = sortable.first().copied().unwrap_or("created_at");
        let order_by = match request.query_param("sort_by") {
            None => default_order,
            Some(name) => sortable
                .iter()
                .copied()
                .find(|s| *s == name)
                .unwrap_or_else(|| {
                    problems.push(ErrorDetail::new(
                        "query.sort_by",
                        format!("must be one of {}", sortable.join(", ")),
                    ));
                    default_order
                }),
        };
        let descending = match request.query_param("sort_order").unwrap_or("desc") {
            "desc" => true,
            "asc" => false,
            _ => {
                problems.push(ErrorDetail::new("query.sort_order", "must be asc or desc"));
                true
            }
        };
        if !problems.is_empty() {
            return Err(ApiError::BadRequest {
                message: "invalid query parameters".into(),
                details: problems,
            });
        }
        Ok(Self {
            limit,
            offset,
            order_by,
            descending,
        })
    }

    /// One page of `SELECT columns FROM from_where` in the requested order
    /// (ties broken by id), with the total count, in the API's list shape
    /// `{data, total, limit, offset}`. `params` bind `?2…` (`?1` is the
    /// organisation); the page bounds follow them.
    pub fn respond(
        &self,
        org: &OrgScoped,
        columns: &str,
        from_where: &str,
        params: &[Value],
        row_json: impl Fn(&[Value]) -> Json,
    ) -> Result<ApiResponse, ApiError> {
        self.respond_with(org, columns, from_where, params, |row| Ok(row_json(row)))
    }

    /// [`Page::respond`] for rows whose JSON needs a read of its own (a run
    /// and its failed steps); a failed read fails the listing.
    pub fn respond_with(
        &self,
        org: &OrgScoped,
        columns: &str,
        from_where: &str,
        params: &[Value],
        row_json: impl Fn(&[Value]) -> Result<Json, ApiError>,
    ) -> Result<ApiResponse, ApiError> {
        let total = org
            .execute(&format!("SELECT COUNT(*) FROM {from_where}"), params)?
            .scalar_i64()
            .unwrap_or(0);
        let direction = if self.descending { "DESC" } else { "ASC" };
        let next = params.len() + 2;
        let mut page_params = params.to_vec();
        page_params.extend([Value::Integer(self.limit), Value::Integer(self.offset)]);
        let rows = org.execute(
            &format!(
                "SELECT {columns} FROM {from_where} ORDER BY {} {direction}, id {direction} \
                 LIMIT ?{next} OFFSET ?{}",
                self.order_by,
                next + 1
            ),
            &page_params,
        )?;
        let data = rows
            .rows
            .iter()
            .map(|row| row_json(row))
            .collect::<Result<Vec<Json>, ApiError>>()?;
        Ok(ApiResponse::json(
            200,
            &json!({"data": data, "total": total, "limit": self.limit, "offset": self.offset}),
        ))
    }
}

/// An RFC 3339 time as a query parameter carries it once decoded, in UTC
/// ms: with or without fractional seconds, `Z` or an offset, `T` or a space
/// between date and time. The `+` of an offset that was not percent-encoded
/// (`?from=2026-12-08T10:00:00+02:00`) arrives as a space and is read as the
/// `+` it was.
pub fn query_time(text: &str) -> Option<i64> {
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(at.timestamp_millis());
    }
    let (time, offset) = text.rsplit_once(' ')?;
    let is_offset = offset.len() == 5
        && offset.as_bytes()[2] == b':'
        && offset.bytes().filter(u8::is_ascii_digit).count() == 4;
    if !is_offset {
        return None;
    }
    chrono::DateTime::parse_from_rfc3339(&format!("{time}+{offset}"))
        .ok()
        .map(|at| at.timestamp_millis())
}

/// The half-open UTC range `[from, to)` of a list request, in ms; either
/// end may be missing. A bound that is not an RFC 3339 time (see
/// [`query_time`]), or `from` not before `to`, answers 400 naming it.
pub fn time_range(request: &ApiRequest) -> Result<(Option<i64>, Option<i64>), ApiError> {
    let mut problems = Vec::new();
    let mut bound = |name: &str| {
        let text = request.query_text(name)?;
        match query_time(&text) {
            Some(at) => Some(at),
            None => {
                problems.push(ErrorDetail::new(
                    format!("query.{name}"),
                    format!("{text:?} is not an RFC 3339 timestamp"),
                ));
                None
            }
        }
    };
    let (from, to) = (bound("from"), bound("to"));
    if let (Some(from), Some(to)) = (from, to)
        && from >= to
    {
        problems.push(ErrorDetail::new("query.to", "must be after from"));
    }
    if !problems.is_empty() {
        return Err(ApiError::BadRequest {
            message: "invalid query parameters".into(),
            details: problems,
        });
    }
    Ok((from, to))
}

/// A `LIKE … ESCAPE '\'` pattern matching `search` anywhere, with `%`, `_`
/// and `\` in it taken literally; `None` when there is no search.
pub fn like_pattern(search: Option<String>) -> Option<String> {
    let search = search.filter(|s| !s.is_empty())?;
    let escaped = search
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    Some(format!("%{escaped}%"))
}

/// Default page of a keyset-paged list (log entries, usage records).
pub const KEYSET_DEFAULT_LIMIT: i64 = 100;
/// Largest page of a keyset-paged list.
pub const KEYSET_MAX_LIMIT: i64 = 1000;

/// The `limit` of a keyset-paged list (1 to [`KEYSET_MAX_LIMIT`], default
/// [`KEYSET_DEFAULT_LIMIT`]); a bad one is added to `problems`.
pub fn keyset_limit(request: &ApiRequest, problems: &mut Vec<ErrorDetail>) -> i64 {
    match request.query_param("limit") {
        None => KEYSET_DEFAULT_LIMIT,
        Some(text) => text
            .parse()
            .ok()
            .filter(|n| (1..=KEYSET_MAX_LIMIT).contains(n))
            .unwrap_or_else(|| {
                problems.push(ErrorDetail::new(
                    "query.limit",
                    format!("must be an integer from 1 to {KEYSET_MAX_LIMIT}"),
                ));
                KEYSET_DEFAULT_LIMIT
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spindle_http::Method;

    const AT: i64 = 1_796_696_200_000; // 2026-12-08T02:16:40Z

    #[test]
    fn every_rfc_3339_form_is_a_time() {
        for text in [
            "2026-12-08T02:16:40Z",
            "2026-12-08T02:16:40.000Z",
            "2026-12-08T02:16:40.000000Z",
            "2026-12-08t02:16:40z",
            "2026-12-08 02:16:40Z",
            "2026-12-08T04:16:40+02:00",
            "2026-12-08T04:16:40.0+02:00",
            "2026-12-07T23:16:40-03:00",
            "2026-12-08T02:16:40+00:00",
            "2026-12-08T02:16:40-00:00",
        ] {
            assert_eq!(query_time(text), Some(AT), "{text}");
        }
    }

    #[test]
    fn an_offset_whose_plus_became_a_space_is_read_as_plus() {
        assert_eq!(query_time("2026-12-08T04:16:40 02:00"), Some(AT));
        assert_eq!(query_time("2026-12-08 04:16:40.5 02:00"), Some(AT + 500));
    }

    #[test]
    fn what_is_not_rfc_3339_is_refused() {
        for text in [
            "",
            "2026-12-08",
            "2026-12-08T02:16:40",
            "2026-12-08T02:16Z",
            "yesterday",
            "2026-12-08T02:16:40 2:00",
            "2026-12-08T02:16:40 ab:cd",
            "1796696200000",
        ] {
            assert_eq!(query_time(text), None, "{text}");
        }
    }

    fn range(query: &str) -> Result<(Option<i64>, Option<i64>), ApiError> {
        time_range(&ApiRequest::new(Method::Get, &format!("/x?{query}")))
    }

    #[test]
    fn a_range_is_read_from_encoded_and_plain_bounds() {
        assert_eq!(range(""), Ok((None, None)));
        assert_eq!(
            range("from=2026-12-08T02%3A16%3A40Z&to=2026-12-08T04:16:41%2B02:00"),
            Ok((Some(AT), Some(AT + 1000)))
        );
        assert_eq!(range("to=2026-12-08T04:16:40+02:00"), Ok((None, Some(AT))));
    }

    #[test]
    fn a_bad_or_empty_range_names_its_bound() {
        let paths = |query| match range(query).unwrap_err() {
            ApiError::BadRequest { details, .. } => {
                details.into_iter().map(|d| d.path).collect::<Vec<_>>()
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(paths("from=soon&to=later"), ["query.from", "query.to"]);
        assert_eq!(
            paths("from=2026-12-08T02:16:40Z&to=2026-12-08T02:16:40Z"),
            ["query.to"]
        );
    }
}
