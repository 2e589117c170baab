//! Model prices and cost in integer micro-dollars.
//!
//! Prices are micro-dollars (1 USD = 1_000_000 micros) per million tokens, so
//! "$2.50 per 1M input tokens" is `2_500_000`. All arithmetic is integer
//! (`i128` intermediates), rounding half up; no floating-point money.
//!
//! The built-in table ([`pricing_table`]) is data shipped in the crate: each
//! entry names the page its figures were read from and the date they were
//! read. Standard (non-batch, non-cached, short-context) rates only.
//! Organisations may override prices; that lives with the caller.

use serde::Serialize;

use crate::{Provider, Usage};

/// A model's price in micro-dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
pub struct Price {
    /// Micro-dollars per million input (prompt) tokens.
    pub input_micros_per_million: i64,
    /// Micro-dollars per million output (completion) tokens.
    pub output_micros_per_million: i64,
}

/// One row of the built-in price table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PriceEntry {
    /// The provider.
    pub provider: Provider,
    /// The model id (dated snapshots such as `gpt-4o-2024-08-06` also match).
    pub model: &'static str,
    /// The price.
    pub price: Price,
    /// Where the figures were read.
    pub source: &'static str,
    /// When they were read (YYYY-MM-DD).
    pub as_of: &'static str,
}

/// The cost of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
pub struct Cost {
    /// What the provider charges, in micro-dollars.
    pub base_micros: i64,
    /// What the organisation is billed (base plus markup), in micro-dollars.
    pub billed_micros: i64,
}

impl Cost {
    /// The markup: what is billed on top of the base, in micro-dollars.
    pub fn markup_micros(&self) -> i64 {
        self.billed_micros.saturating_sub(self.base_micros)
    }

    /// Both costs together, as a bill adds its calls up (saturating).
    pub fn plus(self, other: Cost) -> Cost {
        Cost {
            base_micros: self.base_micros.saturating_add(other.base_micros),
            billed_micros: self.billed_micros.saturating_add(other.billed_micros),
        }
    }

    /// The cost of `n` calls of this cost each (saturating).
    pub fn times(self, n: u64) -> Cost {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        Cost {
            base_micros: self.base_micros.saturating_mul(n),
            billed_micros: self.billed_micros.saturating_mul(n),
        }
    }
}

/// Dollars per million tokens to micros per million, at compile time.
const fn usd(dollars: i64, ten_thousandths: i64) -> i64 {
    // `usd(2, 5000)` is $2.50: the second argument is in 1/10_000 dollars.
    dollars * 1_000_000 + ten_thousandths * 100
}

const fn price(input: i64, output: i64) -> Price {
    Price {
        input_micros_per_million: input,
        output_micros_per_million: output,
    }
}

const AS_OF: &str = "2026-11-25";
const OPENAI_SOURCE: &str = "https://platform.openai.com/docs/pricing (read via the copy at https://deploybase.ai/articles/openai-pricing, dated March 2026)";
const ANTHROPIC_SOURCE: &str = "https://docs.anthropic.com/en/docs/about-claude/pricing";
const ANTHROPIC_HAIKU_45_SOURCE: &str =
    "https://platform.claude.com/docs/en/models/sonnet-5/overview (model comparison table)";
const GEMINI_SOURCE: &str = "https://ai.google.dev/gemini-api/docs/pricing (read via the copy at https://modelpedia.dev/google/gemini-2.0-flash and https://github.com/schlebek/ai-wish-generator/releases/tag/v3.2.0)";
const GROQ_SOURCE: &str = "https://groq.com/pricing (read via the copy at https://tessl.io/registry/skills/github/jeremylongshore/claude-code-plugins-plus-skills/groq-cost-tuning)";

const fn entry(
    provider: Provider,
    model: &'static str,
    price: Price,
    source: &'static str,
) -> PriceEntry {
    PriceEntry {
        provider,
        model,
        price,
        source,
        as_of: AS_OF,
    }
}

static PRICING_TABLE: [PriceEntry; 17] = [
    // OpenAI
    entry(
        Provider::OpenAi,
        "gpt-4o",
        price(usd(2, 5000), usd(10, 0)),
        OPENAI_SOURCE,
    ),
    entry(
        Provider::OpenAi,
        "gpt-4o-mini",
        price(usd(0, 1500), usd(0, 6000)),
        OPENAI_SOURCE,
    ),
    entry(
        Provider::OpenAi,
        "gpt-4.1",
        price(usd(2, 0), usd(8, 0)),
        OPENAI_SOURCE,
    ),
    entry(
        Provider::OpenAi,
        "gpt-4.1-mini",
        price(usd(0, 4000), usd(1, 6000)),
        OPENAI_SOURCE,
    ),
    entry(
        Provider::OpenAi,
        "gpt-4.1-nano",
        price(usd(0, 1000), usd(0, 4000)),
        OPENAI_SOURCE,
    ),
    entry(
        Provider::OpenAi,
        "o3-mini",
        price(usd(1, 1000), usd(4, 4000)),
        OPENAI_SOURCE,
    ),
    // Anthropic
    entry(
        Provider::Anthropic,
        "claude-sonnet-4",
        price(usd(3, 0), usd(15, 0)),
        ANTHROPIC_SOURCE,
    ),
    entry(
        Provider::Anthropic,
        "claude-opus-4",
        price(usd(15, 0), usd(75, 0)),
        ANTHROPIC_SOURCE,
    ),
    entry(
        Provider::Anthropic,
        "claude-3-7-sonnet",
        price(usd(3, 0), usd(15, 0)),
        ANTHROPIC_SOURCE,
    ),
    entry(
        Provider::Anthropic,
        "claude-3-5-haiku",
        price(usd(0, 8000), usd(4, 0)),
        ANTHROPIC_SOURCE,
    ),
    entry(
        Provider::Anthropic,
        "claude-haiku-4-5",
        price(usd(1, 0), usd(5, 0)),
        ANTHROPIC_HAIKU_45_SOURCE,
    ),
    // Gemini (2.5 Pro: prompts up to 200k tokens)
    entry(
        Provider::Gemini,
        "gemini-2.0-flash",
        price(usd(0, 1000), usd(0, 4000)),
        GEMINI_SOURCE,
    ),
    entry(
        Provider::Gemini,
        "gemini-2.5-flash",
        price(usd(0, 3000), usd(2, 5000)),
        GEMINI_SOURCE,
    ),
    entry(
        Provider::Gemini,
        "gemini-2.5-flash-lite",
        price(usd(0, 1000), usd(0, 4000)),
        GEMINI_SOURCE,
    ),
    entry(
        Provider::Gemini,
        "gemini-2.5-pro",
        price(usd(1, 2500), usd(10, 0)),
        GEMINI_SOURCE,
    ),
    // Groq
    entry(
        Provider::Groq,
        "llama-3.3-70b-versatile",
        price(usd(0, 5900), usd(0, 7900)),
        GROQ_SOURCE,
    ),
    entry(
        Provider::Groq,
        "llama-3.1-8b-instant",
        price(usd(0, 500), usd(0, 800)),
        GROQ_SOURCE,
    ),
];

/// The built-in price table, for listing (GET /pricing).
pub fn pricing_table() -> &'static [PriceEntry] {
    &PRICING_TABLE
}

/// The built-in price of a model, or `None` when unknown (the caller records cost 0 and `pricing_missing`).
///
/// Matches the table's model id exactly, or followed by a snapshot suffix:
/// `-latest`, a date (`-20250514`, `-2024-08-06`) or a version (`-001`).
/// A `models/` prefix (Gemini) is ignored. OpenAI-compatible endpoints have no built-in prices.
pub fn price_for(provider: Provider, model: &str) -> Option<Price> {
    let model = model.strip_prefix("models/").unwrap_or(model);
    PRICING_TABLE
        .iter()
        .filter(|e| e.provider == provider)
        .find(|e| matches_model(e.model, model))
        .map(|e| e.price)
}

/// Whether `model` is the priced model `known` or a snapshot of it: `-latest`,
/// a date (`-20250514`, `-2024-08-06`) or a version (`-001`) after its id.
pub fn matches_model(known: &str, model: &str) -> bool {
    if model == known {
        return true;
    }
    let Some(suffix) = model
        .strip_prefix(known)
        .and_then(|rest| rest.strip_prefix('-'))
    else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let is_dashed_date = suffix.len() == 10
        && suffix.split('-').map(str::len).eq([4, 2, 2])
        && suffix.split('-').all(digits);
    suffix == "latest"
        || (suffix.len() == 8 && digits(suffix))
        || (suffix.len() == 3 && digits(suffix))
        || is_dashed_date
}

/// `numerator / denominator` rounded half up (towards +infinity on ties); `denominator > 0`.
fn div_round_half_up(numerator: i128, denominator: i128) -> i128 {
    (2 * numerator + denominator).div_euclid(2 * denominator)
}

fn saturate(value: i128) -> i64 {
    value.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// The cost of `usage` at `price`, plus `markup_percent` on top.
///
/// `base = round(input × in_price / 1M + output × out_price / 1M)` and
/// `billed = round(base × (100 + markup) / 100)`, both rounded half up in
/// integer arithmetic; results saturate at the `i64` range.
pub fn cost_of(price: Price, usage: Usage, markup_percent: u32) -> Cost {
    let numerator = i128::from(usage.input_tokens) * i128::from(price.input_micros_per_million)
        + i128::from(usage.output_tokens) * i128::from(price.output_micros_per_million);
    let base = div_round_half_up(numerator, 1_000_000);
    let billed = div_round_half_up(base * (100 + i128::from(markup_percent)), 100);
    Cost {
        base_micros: saturate(base),
        billed_micros: saturate(billed),
    }
}

/// Micro-dollars as a decimal dollar string with six decimals: `72_000` → `"0.072000"`, `-5` → `"-0.000005"`.
pub fn format_micros(micros: i64) -> String {
    let value = i128::from(micros);
    let sign = if value < 0 { "-" } else { "" };
    let abs = value.abs();
    format!("{sign}{}.{:06}", abs / 1_000_000, abs % 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_example() {
        // 1200 input and 400 output tokens at $0.03 / $0.06 per 1K tokens, 20% markup.
        let price = Price {
            input_micros_per_million: 30_000_000,
            output_micros_per_million: 60_000_000,
        };
        let usage = Usage {
            input_tokens: 1200,
            output_tokens: 400,
        };
        let cost = cost_of(price, usage, 20);
        assert_eq!(
            cost,
            Cost {
                base_micros: 60_000,
                billed_micros: 72_000
            }
        );
        assert_eq!(format_micros(cost.base_micros), "0.060000");
        assert_eq!(format_micros(cost.billed_micros), "0.072000");
        assert_eq!(cost.markup_micros(), 12_000);
    }

    #[test]
    fn costs_add_up_call_by_call() {
        let cost = Cost {
            base_micros: 5,
            billed_micros: 6,
        };
        let twice = cost.plus(cost);
        assert_eq!((twice.base_micros, twice.billed_micros), (10, 12));
        assert_eq!(cost.times(3), cost.plus(cost).plus(cost));
        assert_eq!(cost.times(0), Cost::default());
        assert_eq!(cost.times(u64::MAX).billed_micros, i64::MAX);
        assert_eq!(cost.times(3).markup_micros(), 3);
    }

    #[test]
    fn rounding_is_half_up() {
        let price = Price {
            input_micros_per_million: 500_000, // $0.50 per 1M: 0.5 micro per token
            output_micros_per_million: 0,
        };
        let one = Usage {
            input_tokens: 1,
            output_tokens: 0,
        };
        assert_eq!(cost_of(price, one, 0).base_micros, 1); // 0.5 -> 1
        let three = Usage {
            input_tokens: 3,
            output_tokens: 0,
        };
        assert_eq!(cost_of(price, three, 0).base_micros, 2); // 1.5 -> 2
        let tiny = Price {
            input_micros_per_million: 400_000,
            output_micros_per_million: 0,
        };
        assert_eq!(cost_of(tiny, one, 0).base_micros, 0); // 0.4 -> 0
        // billed: 5 * 1.10 = 5.5 -> 6
        let five = Price {
            input_micros_per_million: 5_000_000,
            output_micros_per_million: 0,
        };
        assert_eq!(
            cost_of(five, one, 10),
            Cost {
                base_micros: 5,
                billed_micros: 6
            }
        );
    }

    #[test]
    fn zero_and_huge_usage() {
        let p = price_for(Provider::OpenAi, "gpt-4o").unwrap();
        assert_eq!(cost_of(p, Usage::default(), 20), Cost::default());
        let huge = Usage {
            input_tokens: u64::MAX,
            output_tokens: u64::MAX,
        };
        let cost = cost_of(p, huge, u32::MAX);
        assert_eq!(cost.billed_micros, i64::MAX);
        assert!(cost.base_micros > 0);
    }

    #[test]
    fn formats_micros() {
        assert_eq!(format_micros(0), "0.000000");
        assert_eq!(format_micros(1), "0.000001");
        assert_eq!(format_micros(1_234_567), "1.234567");
        assert_eq!(format_micros(-72_000), "-0.072000");
        assert_eq!(format_micros(i64::MIN), "-9223372036854.775808");
        assert_eq!(format_micros(i64::MAX), "9223372036854.775807");
    }

    #[test]
    fn looks_up_models_and_snapshots() {
        let gpt4o = price_for(Provider::OpenAi, "gpt-4o").unwrap();
        assert_eq!(gpt4o.input_micros_per_million, 2_500_000);
        assert_eq!(gpt4o.output_micros_per_million, 10_000_000);
        assert_eq!(
            price_for(Provider::OpenAi, "gpt-4o-2024-08-06"),
            Some(gpt4o)
        );
        let mini = price_for(Provider::OpenAi, "gpt-4o-mini").unwrap();
        assert_eq!(mini.input_micros_per_million, 150_000);
        assert_ne!(mini, gpt4o);
        assert_eq!(
            price_for(Provider::OpenAi, "gpt-4.1-2025-04-14"),
            price_for(Provider::OpenAi, "gpt-4.1")
        );
        assert_eq!(
            price_for(Provider::Anthropic, "claude-sonnet-4-20250514")
                .unwrap()
                .output_micros_per_million,
            15_000_000
        );
        assert_eq!(
            price_for(Provider::Anthropic, "claude-3-5-haiku-latest")
                .unwrap()
                .input_micros_per_million,
            800_000
        );
        assert!(price_for(Provider::Anthropic, "claude-haiku-4-5-20251001").is_some());
        // Sonnet 4.5 is another model, not a snapshot of Sonnet 4.
        assert_eq!(
            price_for(Provider::Anthropic, "claude-sonnet-4-5-20250929"),
            None
        );
        assert!(price_for(Provider::Gemini, "models/gemini-2.0-flash-001").is_some());
        assert_eq!(
            price_for(Provider::Groq, "llama-3.1-8b-instant"),
            Some(Price {
                input_micros_per_million: 50_000,
                output_micros_per_million: 80_000
            })
        );
        // Unknown model, or the right model under the wrong provider.
        assert_eq!(price_for(Provider::OpenAi, "gpt-99"), None);
        assert_eq!(price_for(Provider::Groq, "gpt-4o"), None);
        assert_eq!(price_for(Provider::OpenAiCompatible, "gpt-4o"), None);
    }

    #[test]
    fn table_is_well_formed() {
        let table = pricing_table();
        assert!(table.len() >= 12);
        for (i, e) in table.iter().enumerate() {
            assert!(e.price.input_micros_per_million > 0, "{}", e.model);
            assert!(
                e.price.output_micros_per_million >= e.price.input_micros_per_million,
                "{}",
                e.model
            );
            assert!(e.source.starts_with("https://"), "{}", e.model);
            assert_eq!(e.as_of.len(), 10);
            // No duplicates.
            assert!(
                !table[..i]
                    .iter()
                    .any(|o| o.provider == e.provider && o.model == e.model)
            );
            assert_eq!(price_for(e.provider, e.model), Some(e.price));
        }
        let json = serde_json::to_value(table[0]).unwrap();
        assert_eq!(json["provider"], "openai");
        assert_eq!(json["price"]["input_micros_per_million"], 2_500_000);
    }
}
