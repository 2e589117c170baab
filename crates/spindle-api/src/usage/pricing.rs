//! Pricing per organisation: the effective price table (built-in prices,
//! replaced by an organisation's negotiated ones) and the billing markup.
//!
//! Every provider call is priced when it is recorded, with the price and
//! markup in effect at that moment ([`effective_price`], [`markup_percent`]);
//! usage records keep their cost, so a later change never rewrites them.

use crate::auth::{authenticate, record_activity};
use crate::context::RequestContext;
use crate::{now_ms, timestamp};
use serde_json::{Map, Value as Json, json};
use spindle_auth::Role;
use spindle_http::{ApiError, ApiRequest, ApiResponse, ErrorDetail, Params};
use spindle_providers::Provider;
use spindle_providers::pricing::{Price, PriceEntry, format_micros, matches_model, pricing_table};
use spindle_store::{Db, OrgScoped, Value, in_transaction};

/// Markup when neither the organisation nor `billing_markup_percent` sets one.
pub const DEFAULT_MARKUP_PERCENT: u32 = 20;
/// The largest markup an organisation may set, in percent.
pub const MAX_MARKUP_PERCENT: u32 = 1000;
/// The largest price accepted, in micro-dollars per million tokens ($1M).
pub const MAX_PRICE_MICROS: i64 = 1_000_000_000_000;
const MAX_MODEL_CHARS: usize = 200;
const PRICE_FIELDS: [&str; 2] = ["input_micros_per_million", "output_micros_per_million"];

/// Where an effective price comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PriceSource {
    /// A row of the built-in table: the page its figures were read from and when.
    BuiltIn(&'static PriceEntry),
    /// The organisation's own price for `model`, last set at `updated_at` (UTC ms).
    Organisation {
        /// The model id the price was set for (the called model or the one it is a snapshot of).
        model: String,
        /// When it was set.
        updated_at: i64,
    },
}

impl PriceSource {
    /// `"organisation"`, or the built-in entry's source page.
    pub fn name(&self) -> &str {
        match self {
            Self::BuiltIn(entry) => entry.source,
            Self::Organisation { .. } => "organisation",
        }
    }
}

/// The price `org_id` pays for `model` of `provider`: its own price for that
/// model id (or, failing that, for the model it is a dated snapshot of), else
/// the built-in one; `None` when neither exists.
pub fn effective_price(
    db: &dyn Db,
    org_id: &str,
    provider: Provider,
    model: &str,
) -> Result<Option<(Price, PriceSource)>, ApiError> {
    let model = normalise_model(model);
    let rows = OrgScoped::new(db, org_id).execute(
        "SELECT model, input_micros_per_million, output_micros_per_million, updated_at FROM org_prices \
         WHERE org_id = ?1 AND provider = ?2 AND (model = ?3 OR substr(?3, 1, length(model) + 1) = model || '-')",
        &[Value::from(provider.as_str()), Value::from(model)],
    )?;
    let own = rows
        .rows
        .iter()
        .filter_map(|row| Some((row[0].as_str()?, row)))
        .filter(|(known, _)| matches_model(known, model))
        // The exact id first, then the longest (most specific) base model.
        .max_by_key(|(known, _)| (*known == model, known.len()));
    if let Some((known, row)) = own {
        let price = Price {
            input_micros_per_million: row[1].as_i64().unwrap_or(0),
            output_micros_per_million: row[2].as_i64().unwrap_or(0),
        };
        let source = PriceSource::Organisation {
            model: known.to_string(),
            updated_at: row[3].as_i64().unwrap_or(0),
        };
        return Ok(Some((price, source)));
    }
    Ok(built_in(provider, model).map(|entry| (entry.price, PriceSource::BuiltIn(entry))))
}

/// The built-in entry that prices `model`, by the table's own matching rule
/// (the id, or the id followed by a snapshot suffix).
pub fn built_in(provider: Provider, model: &str) -> Option<&'static PriceEntry> {
    let model = normalise_model(model);
    pricing_table()
        .iter()
        .filter(|e| e.provider == provider)
        .find(|e| matches_model(e.model, model))
}

/// The organisation's own markup, if it has set one.
pub fn org_markup_percent(db: &dyn Db, org_id: &str) -> Result<Option<u32>, ApiError> {
    Ok(OrgScoped::new(db, org_id)
        .execute(
            "SELECT markup_percent FROM org_billing_settings WHERE org_id = ?1",
            &[],
        )?
        .scalar_i64()
        .and_then(|m| u32::try_from(m).ok()))
}

/// The app-wide markup: the `billing_markup_percent` variable (at most
/// [`MAX_MARKUP_PERCENT`]), else [`DEFAULT_MARKUP_PERCENT`].
pub fn default_markup_percent(ctx: &RequestContext) -> Result<u32, ApiError> {
    match ctx.variable("billing_markup_percent") {
        None => Ok(DEFAULT_MARKUP_PERCENT),
        Some(value) => value
            .trim()
            .parse::<u64>()
            .map(|m| u32::try_from(m.min(u64::from(MAX_MARKUP_PERCENT))).unwrap_or(0))
            .map_err(|_| {
                ApiError::misconfigured(
                    "billing_markup_percent",
                    format!("is {value:?}, not a whole number"),
                )
            }),
    }
}

/// The markup `org_id` is billed with: its own setting, else the app-wide one.
pub fn markup_percent(ctx: &RequestContext, db: &dyn Db, org_id: &str) -> Result<u32, ApiError> {
    match org_markup_percent(db, org_id)? {
        Some(markup) => Ok(markup),
        None => default_markup_percent(ctx),
    }
}

/// Gemini's `models/` prefix is not part of the model id.
fn normalise_model(model: &str) -> &str {
    model.strip_prefix("models/").unwrap_or(model)
}

// ---------------------------------------------------------------- endpoints

/// `GET /api/v1/usage/pricing` (viewer): the organisation's effective price
/// table, each price with its source and date, and its markup.
pub(super) fn get_pricing(
    ctx: &RequestContext,
    request: &ApiRequest,
    _: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Viewer)?;
    let db = ctx.db()?;
    let own = OrgScoped::new(db, &caller.org_id).execute(
        "SELECT provider, model, input_micros_per_million, output_micros_per_million, updated_at \
         FROM org_prices WHERE org_id = ?1 ORDER BY provider, model",
        &[],
    )?;
    let own: Vec<(Provider, String, Price, i64)> = own
        .rows
        .iter()
        .filter_map(|row| {
            Some((
                Provider::parse(row[0].as_str()?)?,
                row[1].as_str()?.to_string(),
                Price {
                    input_micros_per_million: row[2].as_i64()?,
                    output_micros_per_million: row[3].as_i64()?,
                },
                row[4].as_i64().unwrap_or(0),
            ))
        })
        .collect();
    let find_own = |provider: Provider, model: &str| {
        own.iter().find(|(p, m, _, _)| *p == provider && m == model)
    };
    let mut data: Vec<Json> = pricing_table()
        .iter()
        .map(|entry| match find_own(entry.provider, entry.model) {
            Some((_, _, price, updated_at)) => {
                own_entry_json(entry.provider, entry.model, *price, *updated_at)
            }
            None => built_in_entry_json(entry),
        })
        .collect();
    data.extend(
        own.iter()
            .filter(|(p, m, _, _)| {
                !pricing_table()
                    .iter()
                    .any(|e| e.provider == *p && e.model == m)
            })
            .map(|(p, m, price, updated_at)| own_entry_json(*p, m, *price, *updated_at)),
    );
    let mut body = settings_json(ctx, db, &caller.org_id)?;
    body["data"] = Json::Array(data);
    body["unit"] = json!("micro-dollars (USD) per million tokens");
    Ok(ApiResponse::json(200, &body))
}

/// `PUT /api/v1/usage/pricing/:provider/:model` (admin): the organisation's
/// own price of a model, `{input_micros_per_million, output_micros_per_million}`.
pub(super) fn put_price(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Admin)?;
    let (provider, model) = price_key(params)?;
    let body = request.json_object(&PRICE_FIELDS)?;
    let mut problems = Vec::new();
    let mut field = |name: &str| -> Result<i64, ApiError> {
        let value = match body.get(name) {
            None | Some(Json::Null) => {
                return Err(ApiError::BadRequest {
                    message: format!("{name} is required"),
                    details: vec![ErrorDetail::new(name, "an integer is required")],
                });
            }
            Some(value) => value,
        };
        let Some(number) = value.as_i64().or_else(|| value.as_u64().map(|_| i64::MAX)) else {
            return Err(ApiError::BadRequest {
                message: format!("{name} must be an integer"),
                details: vec![ErrorDetail::new(
                    name,
                    "must be an integer number of micro-dollars",
                )],
            });
        };
        if !(0..=MAX_PRICE_MICROS).contains(&number) {
            problems.push(ErrorDetail::new(
                name,
                format!(
                    "must be between 0 and {MAX_PRICE_MICROS} micro-dollars per million tokens"
                ),
            ));
        }
        Ok(number)
    };
    let price = Price {
        input_micros_per_million: field(PRICE_FIELDS[0])?,
        output_micros_per_million: field(PRICE_FIELDS[1])?,
    };
    if !problems.is_empty() {
        return Err(ApiError::Validation {
            message: "the price is invalid".into(),
            details: problems,
        });
    }
    let now = now_ms();
    in_transaction(ctx.db()?, |db| -> Result<(), ApiError> {
        let previous = OrgScoped::new(db, &caller.org_id).execute(
            "SELECT input_micros_per_million, output_micros_per_million FROM org_prices \
             WHERE org_id = ?1 AND provider = ?2 AND model = ?3",
            &[Value::from(provider.as_str()), Value::from(model.as_str())],
        )?;
        let previous = previous.rows.first().map(|row| {
            json!({"input_micros_per_million": row[0].as_i64(), "output_micros_per_million": row[1].as_i64()})
        });
        db.execute(
            "INSERT INTO org_prices (org_id, provider, model, input_micros_per_million, output_micros_per_million, \
             updated_by, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7) \
             ON CONFLICT (org_id, provider, model) DO UPDATE SET \
             input_micros_per_million = excluded.input_micros_per_million, \
             output_micros_per_million = excluded.output_micros_per_million, \
             updated_by = excluded.updated_by, updated_at = excluded.updated_at",
            &[
                Value::from(caller.org_id.as_str()),
                Value::from(provider.as_str()),
                Value::from(model.as_str()),
                Value::Integer(price.input_micros_per_million),
                Value::Integer(price.output_micros_per_million),
                Value::from(caller.subject.as_str()),
                Value::Integer(now),
            ],
        )?;
        record_activity(
            ctx,
            db,
            &caller.org_id,
            &caller.subject,
            "pricing.price_set",
            ("model_price", &format!("{}/{model}", provider.as_str())),
            &json!({
                "provider": provider.as_str(),
                "model": model,
                "input_micros_per_million": price.input_micros_per_million,
                "output_micros_per_million": price.output_micros_per_million,
                "previous": previous,
            }),
        )
    })?;
    Ok(ApiResponse::json(
        200,
        &own_entry_json(provider, &model, price, now),
    ))
}

/// `DELETE /api/v1/usage/pricing/:provider/:model` (admin): drops the
/// organisation's own price, so the built-in one (if any) applies again.
pub(super) fn delete_price(
    ctx: &RequestContext,
    request: &ApiRequest,
    params: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Admin)?;
    let (provider, model) = price_key(params)?;
    in_transaction(ctx.db()?, |db| -> Result<(), ApiError> {
        let removed = OrgScoped::new(db, &caller.org_id).execute(
            "DELETE FROM org_prices WHERE org_id = ?1 AND provider = ?2 AND model = ?3 \
             RETURNING input_micros_per_million, output_micros_per_million",
            &[Value::from(provider.as_str()), Value::from(model.as_str())],
        )?;
        let Some(row) = removed.rows.first() else {
            return Err(ApiError::NotFound(format!(
                "the organisation has no price of its own for {}/{model}",
                provider.as_str()
            )));
        };
        record_activity(
            ctx,
            db,
            &caller.org_id,
            &caller.subject,
            "pricing.price_removed",
            ("model_price", &format!("{}/{model}", provider.as_str())),
            &json!({
                "provider": provider.as_str(),
                "model": model,
                "previous": {"input_micros_per_million": row[0].as_i64(), "output_micros_per_million": row[1].as_i64()},
            }),
        )
    })?;
    Ok(ApiResponse::no_content())
}

/// `GET /api/v1/usage/settings` (viewer): the organisation's markup and where it comes from.
pub(super) fn get_settings(
    ctx: &RequestContext,
    request: &ApiRequest,
    _: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Viewer)?;
    Ok(ApiResponse::json(
        200,
        &settings_json(ctx, ctx.db()?, &caller.org_id)?,
    ))
}

/// `PUT /api/v1/usage/settings` (admin): `{markup_percent}`, an integer
/// 0–1000, or `null` to go back to the app-wide default.
pub(super) fn put_settings(
    ctx: &RequestContext,
    request: &ApiRequest,
    _: &Params,
) -> Result<ApiResponse, ApiError> {
    let caller = authenticate(ctx, request)?;
    caller.require(Role::Admin)?;
    let body = request.json_object(&["markup_percent"])?;
    let markup = match body.get("markup_percent") {
        None => {
            return Err(ApiError::BadRequest {
                message: "markup_percent is required".into(),
                details: vec![ErrorDetail::new(
                    "markup_percent",
                    "an integer, or null for the default",
                )],
            });
        }
        Some(Json::Null) => None,
        Some(value) => Some(value.as_i64().ok_or_else(|| ApiError::BadRequest {
            message: "markup_percent must be an integer".into(),
            details: vec![ErrorDetail::new("markup_percent", "must be an integer")],
        })?),
    };
    if let Some(markup) = markup
        && !(0..=i64::from(MAX_MARKUP_PERCENT)).contains(&markup)
    {
        return Err(ApiError::Validation {
            message: "the settings are invalid".into(),
            details: vec![ErrorDetail::new(
                "markup_percent",
                format!("must be between 0 and {MAX_MARKUP_PERCENT}"),
            )],
        });
    }
    in_transaction(ctx.db()?, |db| -> Result<(), ApiError> {
        let previous = org_markup_percent(db, &caller.org_id)?;
        match markup {
            Some(markup) => db.execute(
                "INSERT INTO org_billing_settings (org_id, markup_percent, updated_by, updated_at) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (org_id) DO UPDATE SET \
                 markup_percent = excluded.markup_percent, updated_by = excluded.updated_by, \
                 updated_at = excluded.updated_at",
                &[
                    Value::from(caller.org_id.as_str()),
                    Value::Integer(markup),
                    Value::from(caller.subject.as_str()),
                    Value::Integer(now_ms()),
                ],
            )?,
            None => OrgScoped::new(db, &caller.org_id)
                .execute("DELETE FROM org_billing_settings WHERE org_id = ?1", &[])?,
        };
        record_activity(
            ctx,
            db,
            &caller.org_id,
            &caller.subject,
            "pricing.markup_set",
            ("organization", &caller.org_id),
            &json!({"markup_percent": markup, "previous": previous}),
        )
    })?;
    Ok(ApiResponse::json(
        200,
        &settings_json(ctx, ctx.db()?, &caller.org_id)?,
    ))
}

/// `{markup_percent, markup_source, default_markup_percent, updated_at}`.
fn settings_json(ctx: &RequestContext, db: &dyn Db, org_id: &str) -> Result<Json, ApiError> {
    let row = OrgScoped::new(db, org_id)
        .execute(
            "SELECT markup_percent, updated_at FROM org_billing_settings WHERE org_id = ?1",
            &[],
        )?
        .into_first();
    let default = default_markup_percent(ctx)?;
    Ok(match row {
        Some(row) => json!({
            "markup_percent": row[0].as_i64(),
            "markup_source": "organisation",
            "default_markup_percent": default,
            "updated_at": row[1].as_i64().map(timestamp),
        }),
        None => json!({
            "markup_percent": default,
            "markup_source": "default",
            "default_markup_percent": default,
            "updated_at": null,
        }),
    })
}

/// The `:provider` and `:model` of a pricing route, checked: 422 for an
/// unknown provider or an unusable model id.
fn price_key(params: &Params) -> Result<(Provider, String), ApiError> {
    let provider_name = percent_decode(params.get("provider").unwrap_or_default());
    let model = percent_decode(params.get("model").unwrap_or_default());
    let model = normalise_model(&model).to_string();
    let mut problems = Vec::new();
    let provider = Provider::parse(&provider_name);
    if provider.is_none() {
        let known: Vec<&str> = Provider::ALL.iter().map(|p| p.as_str()).collect();
        problems.push(ErrorDetail::new(
            "provider",
            format!(
                "unknown provider {provider_name:?}; expected one of {}",
                known.join(", ")
            ),
        ));
    }
    let chars = model.chars().count();
    if !(1..=MAX_MODEL_CHARS).contains(&chars)
        || model.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        problems.push(ErrorDetail::new(
            "model",
            format!("must be 1 to {MAX_MODEL_CHARS} characters without spaces"),
        ));
    }
    match provider {
        Some(provider) if problems.is_empty() => Ok((provider, model)),
        _ => Err(ApiError::Validation {
            message: "the price's provider or model is invalid".into(),
            details: problems,
        }),
    }
}

fn price_fields(price: Price) -> Map<String, Json> {
    let mut fields = Map::new();
    fields.insert(
        "input_micros_per_million".into(),
        json!(price.input_micros_per_million),
    );
    fields.insert(
        "output_micros_per_million".into(),
        json!(price.output_micros_per_million),
    );
    fields.insert(
        "input_per_million".into(),
        json!(format_micros(price.input_micros_per_million)),
    );
    fields.insert(
        "output_per_million".into(),
        json!(format_micros(price.output_micros_per_million)),
    );
    fields
}

fn built_in_entry_json(entry: &PriceEntry) -> Json {
    let mut fields = Map::new();
    fields.insert("provider".into(), json!(entry.provider.as_str()));
    fields.insert("model".into(), json!(entry.model));
    fields.extend(price_fields(entry.price));
    fields.insert("source".into(), json!(entry.source));
    fields.insert("as_of".into(), json!(entry.as_of));
    fields.insert("updated_at".into(), Json::Null);
    fields.insert("built_in".into(), Json::Null);
    Json::Object(fields)
}

/// An organisation's price; `built_in` is what a DELETE goes back to.
fn own_entry_json(provider: Provider, model: &str, price: Price, updated_at: i64) -> Json {
    let mut fields = Map::new();
    fields.insert("provider".into(), json!(provider.as_str()));
    fields.insert("model".into(), json!(model));
    fields.extend(price_fields(price));
    fields.insert("source".into(), json!("organisation"));
    let set_at = timestamp(updated_at);
    fields.insert("as_of".into(), json!(set_at.get(..10).unwrap_or_default()));
    fields.insert("updated_at".into(), json!(set_at));
    let built_in = built_in(provider, model).map(|entry| {
        let mut fields = price_fields(entry.price);
        fields.insert("model".into(), json!(entry.model));
        fields.insert("source".into(), json!(entry.source));
        fields.insert("as_of".into(), json!(entry.as_of));
        Json::Object(fields)
    });
    fields.insert("built_in".into(), built_in.unwrap_or(Json::Null));
    Json::Object(fields)
}

/// Decodes `%XX` escapes of a path segment (a model id such as
/// `org%2Fmodel`); `+` stays a `+`, a malformed escape stays as it is.
fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_backends::TestBackends;
    use spindle_providers::price_for;

    /// A context with organisations `o1` and `o2`.
    fn setup(markup: Option<&'static str>) -> RequestContext {
        let ctx = RequestContext::new(Box::new(match markup {
            Some(markup) => TestBackends::memory().variable("billing_markup_percent", markup),
            None => TestBackends::memory(),
        }));
        ctx.db()
            .unwrap()
            .execute(
                "INSERT INTO organizations (id, name, created_at, updated_at) VALUES ('o1', 'one', 0, 0), \
                 ('o2', 'two', 0, 0)",
                &[],
            )
            .unwrap();
        ctx
    }

    fn set_price(ctx: &RequestContext, org: &str, provider: &str, model: &str, input: i64) {
        ctx.db()
            .unwrap()
            .execute(
                "INSERT INTO org_prices (org_id, provider, model, input_micros_per_million, \
                 output_micros_per_million, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 5, 5)",
                &[
                    Value::from(org),
                    Value::from(provider),
                    Value::from(model),
                    Value::Integer(input),
                    Value::Integer(input * 2),
                ],
            )
            .unwrap();
    }

    fn price_of(ctx: &RequestContext, org: &str, provider: Provider, model: &str) -> Option<i64> {
        effective_price(ctx.db().unwrap(), org, provider, model)
            .unwrap()
            .map(|(p, _)| p.input_micros_per_million)
    }

    #[test]
    fn built_in_prices_apply_until_an_organisation_sets_its_own() {
        let ctx = setup(None);
        let (price, source) = effective_price(ctx.db().unwrap(), "o1", Provider::OpenAi, "gpt-4o")
            .unwrap()
            .unwrap();
        assert_eq!(Some(price), price_for(Provider::OpenAi, "gpt-4o"));
        assert!(matches!(source, PriceSource::BuiltIn(e) if e.model == "gpt-4o"));
        assert!(source.name().starts_with("https://"));

        set_price(&ctx, "o1", "openai", "gpt-4o", 1_000_000);
        let (price, source) = effective_price(ctx.db().unwrap(), "o1", Provider::OpenAi, "gpt-4o")
            .unwrap()
            .unwrap();
        assert_eq!(price.input_micros_per_million, 1_000_000);
        assert_eq!(price.output_micros_per_million, 2_000_000);
        assert_eq!(
            source,
            PriceSource::Organisation {
                model: "gpt-4o".into(),
                updated_at: 5
            }
        );
        assert_eq!(source.name(), "organisation");
        // Another organisation still pays the built-in price.
        assert_eq!(
            price_of(&ctx, "o2", Provider::OpenAi, "gpt-4o"),
            Some(2_500_000)
        );
        // The same model under another provider is another price.
        assert_eq!(price_of(&ctx, "o1", Provider::Groq, "gpt-4o"), None);
    }

    #[test]
    fn an_own_price_covers_snapshots_and_the_exact_id_wins() {
        let ctx = setup(None);
        set_price(&ctx, "o1", "openai", "gpt-4o", 1_000_000);
        assert_eq!(
            price_of(&ctx, "o1", Provider::OpenAi, "gpt-4o-2024-08-06"),
            Some(1_000_000)
        );
        // gpt-4o-mini is another model, not a snapshot of gpt-4o.
        assert_eq!(
            price_of(&ctx, "o1", Provider::OpenAi, "gpt-4o-mini"),
            Some(150_000)
        );
        set_price(&ctx, "o1", "openai", "gpt-4o-2024-08-06", 7);
        assert_eq!(
            price_of(&ctx, "o1", Provider::OpenAi, "gpt-4o-2024-08-06"),
            Some(7)
        );
        assert_eq!(
            price_of(&ctx, "o1", Provider::OpenAi, "gpt-4o-latest"),
            Some(1_000_000)
        );
        // Models without a built-in price (self-hosted) can be priced too;
        // `models/` is not part of the id.
        assert_eq!(
            price_of(&ctx, "o1", Provider::OpenAiCompatible, "llama3.2"),
            None
        );
        set_price(&ctx, "o1", "openai_compatible", "llama3.2", 0);
        assert_eq!(
            price_of(&ctx, "o1", Provider::OpenAiCompatible, "llama3.2"),
            Some(0)
        );
        set_price(&ctx, "o1", "gemini", "gemini-2.0-flash", 11);
        assert_eq!(
            price_of(&ctx, "o1", Provider::Gemini, "models/gemini-2.0-flash-001"),
            Some(11)
        );
        // A LIKE wildcard in a stored id matches nothing it should not.
        set_price(&ctx, "o1", "groq", "llama_3", 3);
        assert_eq!(price_of(&ctx, "o1", Provider::Groq, "llamaX3-latest"), None);
    }

    #[test]
    fn built_in_lookup_agrees_with_the_provider_crate() {
        for name in [
            "gpt-4o",
            "gpt-4o-2024-08-06",
            "gpt-4o-mini",
            "gpt-4.1-2025-04-14",
            "claude-sonnet-4-20250514",
            "claude-sonnet-4-5-20250929",
            "claude-3-5-haiku-latest",
            "models/gemini-2.0-flash-001",
            "llama-3.1-8b-instant",
            "gpt-99",
        ] {
            for provider in Provider::ALL {
                assert_eq!(
                    built_in(provider, name).map(|e| e.price),
                    price_for(provider, name),
                    "{provider:?} {name}"
                );
            }
        }
    }

    #[test]
    fn markup_is_the_organisations_else_the_variable_else_twenty() {
        let ctx = setup(None);
        let db = ctx.db().unwrap();
        assert_eq!(markup_percent(&ctx, db, "o1").unwrap(), 20);
        let ctx = setup(Some("35"));
        let db = ctx.db().unwrap();
        assert_eq!(markup_percent(&ctx, db, "o1").unwrap(), 35);
        db.execute(
            "INSERT INTO org_billing_settings (org_id, markup_percent, updated_at) VALUES ('o1', 0, 1)",
            &[],
        )
        .unwrap();
        assert_eq!(markup_percent(&ctx, db, "o1").unwrap(), 0);
        assert_eq!(org_markup_percent(db, "o1").unwrap(), Some(0));
        assert_eq!(markup_percent(&ctx, db, "o2").unwrap(), 35);
        let ctx = setup(Some("5000"));
        assert_eq!(default_markup_percent(&ctx).unwrap(), 1000);
        let ctx = setup(Some("lots"));
        let error = default_markup_percent(&ctx).unwrap_err();
        assert_eq!((error.status(), error.code()), (503, "misconfigured"));
    }

    #[test]
    fn model_segments_are_percent_decoded() {
        assert_eq!(percent_decode("meta-llama%2Fllama-3"), "meta-llama/llama-3");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("a%zzb"), "a%zzb");
        assert_eq!(percent_decode("a+b"), "a+b");
    }
}
