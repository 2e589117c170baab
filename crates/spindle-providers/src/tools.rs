//! Built-in tools: `calculator`, `http_get` and `current_time`.
//!
//! `calculator` and `current_time` run here ([`run_builtin_tool`]); `http_get`
//! needs I/O, so the caller fetches and then caps the body with
//! [`truncate_http_body`].

use serde_json::{Value, json};

use crate::{ToolCall, ToolSpec};

/// Names of the built-in tools.
pub const BUILTIN_TOOLS: &[&str] = &["calculator", "http_get", "current_time"];

/// The most bytes of an `http_get` response body handed to the model.
pub const HTTP_GET_MAX_BYTES: usize = 64 * 1024;

/// The longest expression [`calculate`] accepts, in bytes.
pub const CALCULATOR_MAX_LEN: usize = 1000;

/// The deepest nesting (parentheses, unary signs, powers, calls) [`calculate`] accepts.
pub const CALCULATOR_MAX_DEPTH: usize = 64;

/// The spec of a built-in tool, or `None` for an unknown name.
pub fn builtin_tool(name: &str) -> Option<ToolSpec> {
    let (description, parameters) = match name {
        "calculator" => (
            "Evaluate an arithmetic expression. Supports + - * / % ^ (or **), parentheses, \
             decimals and exponents, the constants pi and e, and the functions sqrt, abs, \
             round, floor, ceil, min, max, ln, log10, exp, sin, cos, tan.",
            json!({
                "type": "object",
                "properties": {
                    "expression": {"type": "string", "description": "The expression, e.g. \"(2 + 3) * 4 ^ 2\""}
                },
                "required": ["expression"]
            }),
        ),
        "http_get" => (
            "Fetch a URL with HTTP GET and return the response body as text (at most 64 KiB).",
            json!({
                "type": "object",
                "properties": {
                    "url": {"type": "string", "description": "An absolute http or https URL"}
                },
                "required": ["url"]
            }),
        ),
        "current_time" => (
            "Get the current date and time as an RFC 3339 timestamp in UTC.",
            // A property is declared because Gemini rejects object schemas with no properties.
            json!({
                "type": "object",
                "properties": {
                    "timezone": {"type": "string", "description": "Only \"UTC\" is supported; may be omitted"}
                }
            }),
        ),
        _ => return None,
    };
    Some(ToolSpec {
        name: name.to_string(),
        description: description.to_string(),
        parameters,
    })
}

/// Runs a built-in tool that needs no I/O; `None` for `http_get` and unknown tools.
///
/// `Ok` holds the text to send back as the tool result; `Err` a message to send
/// back as a failed result. `now_unix_millis` is the caller's clock, for `current_time`.
pub fn run_builtin_tool(call: &ToolCall, now_unix_millis: i64) -> Option<Result<String, String>> {
    match call.name.as_str() {
        "calculator" => {
            let Some(expression) = call.arguments.get("expression").and_then(Value::as_str) else {
                return Some(Err("missing string argument `expression`".to_string()));
            };
            Some(calculate(expression).map(format_number))
        }
        "current_time" => {
            let timezone = call.arguments.get("timezone").and_then(Value::as_str);
            match timezone {
                None | Some("") => {}
                Some(tz) if tz.eq_ignore_ascii_case("utc") || tz == "Z" => {}
                Some(tz) => {
                    return Some(Err(format!(
                        "unsupported timezone `{tz}`: only UTC is supported"
                    )));
                }
            }
            Some(Ok(format_current_time(now_unix_millis)))
        }
        _ => None,
    }
}

/// A calculator result as text: integers without a fraction, others in shortest form.
pub fn format_number(value: f64) -> String {
    if value == value.trunc() && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

/// Cuts `text` to at most `max_bytes` bytes without splitting a character.
pub fn truncate_utf8(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// An `http_get` response body as text capped at [`HTTP_GET_MAX_BYTES`]; the flag says whether it was cut.
///
/// Invalid UTF-8 is replaced (U+FFFD); a character split by the cap is dropped.
pub fn truncate_http_body(body: &[u8]) -> (String, bool) {
    let truncated = body.len() > HTTP_GET_MAX_BYTES;
    let mut cut = &body[..body.len().min(HTTP_GET_MAX_BYTES)];
    if truncated {
        // Drop a trailing partial character rather than turn it into U+FFFD.
        if let Err(e) = std::str::from_utf8(cut)
            && e.error_len().is_none()
        {
            cut = &cut[..e.valid_up_to()];
        }
    }
    let text = String::from_utf8_lossy(cut);
    // Replacement characters can make the text longer than the bytes it came from.
    let capped = truncate_utf8(&text, HTTP_GET_MAX_BYTES);
    let was_cut = truncated || capped.len() < text.len();
    (capped.to_string(), was_cut)
}

/// An RFC 3339 UTC timestamp with millisecond precision: `0` → `"1970-01-01T00:00:00.000Z"`.
///
/// Civil-date arithmetic is done here (proleptic Gregorian calendar), no clock is read.
pub fn format_current_time(unix_millis: i64) -> String {
    let millis = unix_millis.rem_euclid(1000);
    let secs = unix_millis.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let secs_of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        secs_of_day / 3600,
        secs_of_day % 3600 / 60,
        secs_of_day % 60
    )
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Evaluates an arithmetic expression safely (a recursive-descent parser, no code evaluation).
///
/// Grammar: numbers (`12`, `3.5`, `.5`, `1e-3`), `+ - * / %`, `^` or `**`
/// (right-associative, binds tighter than unary minus: `-2^2 = -4`),
/// parentheses, constants `pi` and `e`, and functions `sqrt abs round floor
/// ceil ln log10 exp sin cos tan` (one argument) and `min max` (one or more).
/// Fails on input over [`CALCULATOR_MAX_LEN`] bytes, nesting deeper than
/// [`CALCULATOR_MAX_DEPTH`], division or modulo by zero, and non-finite results.
pub fn calculate(expression: &str) -> Result<f64, String> {
    if expression.len() > CALCULATOR_MAX_LEN {
        return Err(format!(
            "expression is longer than {CALCULATOR_MAX_LEN} characters"
        ));
    }
    let tokens = tokenize(expression)?;
    if tokens.is_empty() {
        return Err("expression is empty".to_string());
    }
    let mut parser = Parser {
        tokens: &tokens,
        pos: 0,
        depth: 0,
    };
    let value = parser.expression()?;
    if let Some(token) = parser.tokens.get(parser.pos) {
        return Err(format!("unexpected {}", token.describe()));
    }
    if !value.is_finite() {
        return Err("result is not a finite number".to_string());
    }
    Ok(value)
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Number(f64),
    Ident(String),
    Op(char),
    Pow,
    LParen,
    RParen,
    Comma,
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Number(n) => format!("number {n}"),
            Token::Ident(s) => format!("`{s}`"),
            Token::Op(c) => format!("`{c}`"),
            Token::Pow => "`**`".to_string(),
            Token::LParen => "`(`".to_string(),
            Token::RParen => "`)`".to_string(),
            Token::Comma => "`,`".to_string(),
        }
    }
}

fn tokenize(input: &str) -> Result<Vec<Token>, String> {
    let bytes = input.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'0'..=b'9' | b'.' => {
                let start = i;
                while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
                    i += 1;
                }
                // An exponent only when digits follow (`2e3`, `2e-3`); `2e` stays an error.
                if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
                    let mut j = i + 1;
                    if j < bytes.len() && (bytes[j] == b'+' || bytes[j] == b'-') {
                        j += 1;
                    }
                    if j < bytes.len() && bytes[j].is_ascii_digit() {
                        while j < bytes.len() && bytes[j].is_ascii_digit() {
                            j += 1;
                        }
                        i = j;
                    }
                }
                let text = &input[start..i];
                let value: f64 = text
                    .parse()
                    .map_err(|_| format!("invalid number `{text}`"))?;
                tokens.push(Token::Number(value));
            }
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                let start = i;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                tokens.push(Token::Ident(input[start..i].to_ascii_lowercase()));
            }
            b'*' if bytes.get(i + 1) == Some(&b'*') => {
                tokens.push(Token::Pow);
                i += 2;
            }
            b'^' => {
                tokens.push(Token::Pow);
                i += 1;
            }
            b'+' | b'-' | b'*' | b'/' | b'%' => {
                tokens.push(Token::Op(c as char));
                i += 1;
            }
            b'(' => {
                tokens.push(Token::LParen);
                i += 1;
            }
            b')' => {
                tokens.push(Token::RParen);
                i += 1;
            }
            b',' => {
                tokens.push(Token::Comma);
                i += 1;
            }
            _ => {
                let ch = input[i..].chars().next().unwrap_or('?');
                return Err(format!("unexpected character `{ch}` at position {i}"));
            }
        }
    }
    Ok(tokens)
}

struct Parser<'a> {
    tokens: &'a [Token],
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        token
    }

    fn enter(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > CALCULATOR_MAX_DEPTH {
            return Err(format!(
                "expression is nested deeper than {CALCULATOR_MAX_DEPTH} levels"
            ));
        }
        Ok(())
    }

    fn expect(&mut self, want: Token) -> Result<(), String> {
        match self.next() {
            Some(t) if t == want => Ok(()),
            Some(t) => Err(format!(
                "expected {}, found {}",
                want.describe(),
                t.describe()
            )),
            None => Err(format!("expected {}, found the end", want.describe())),
        }
    }

    // expression := term (('+' | '-') term)*
    fn expression(&mut self) -> Result<f64, String> {
        let mut value = self.term()?;
        while let Some(Token::Op(op @ ('+' | '-'))) = self.peek().cloned() {
            self.pos += 1;
            let rhs = self.term()?;
            value = if op == '+' { value + rhs } else { value - rhs };
        }
        Ok(value)
    }

    // term := unary (('*' | '/' | '%') unary)*
    fn term(&mut self) -> Result<f64, String> {
        let mut value = self.unary()?;
        while let Some(Token::Op(op @ ('*' | '/' | '%'))) = self.peek().cloned() {
            self.pos += 1;
            let rhs = self.unary()?;
            value = match op {
                '*' => value * rhs,
                _ if rhs == 0.0 => return Err("division by zero".to_string()),
                '/' => value / rhs,
                _ => value % rhs,
            };
        }
        Ok(value)
    }

    // unary := ('-' | '+') unary | power
    fn unary(&mut self) -> Result<f64, String> {
        self.enter()?;
        let value = match self.peek() {
            Some(Token::Op('-')) => {
                self.pos += 1;
                -self.unary()?
            }
            Some(Token::Op('+')) => {
                self.pos += 1;
                self.unary()?
            }
            _ => self.power()?,
        };
        self.depth -= 1;
        Ok(value)
    }

    // power := primary (('^' | '**') unary)?   (right-associative through unary)
    fn power(&mut self) -> Result<f64, String> {
        let base = self.primary()?;
        if self.peek() == Some(&Token::Pow) {
            self.pos += 1;
            let exponent = self.unary()?;
            return Ok(base.powf(exponent));
        }
        Ok(base)
    }

    // primary := number | '(' expression ')' | constant | function '(' args ')'
    fn primary(&mut self) -> Result<f64, String> {
        match self.next() {
            Some(Token::Number(n)) => Ok(n),
            Some(Token::LParen) => {
                self.enter()?;
                let value = self.expression()?;
                self.expect(Token::RParen)?;
                self.depth -= 1;
                Ok(value)
            }
            Some(Token::Ident(name)) => match name.as_str() {
                "pi" => Ok(std::f64::consts::PI),
                "e" => Ok(std::f64::consts::E),
                _ => self.call(&name),
            },
            Some(t) => Err(format!("unexpected {}", t.describe())),
            None => Err("unexpected end of expression".to_string()),
        }
    }

    fn call(&mut self, name: &str) -> Result<f64, String> {
        const UNARY: &[&str] = &[
            "sqrt", "abs", "round", "floor", "ceil", "ln", "log10", "exp", "sin", "cos", "tan",
        ];
        if !UNARY.contains(&name) && name != "min" && name != "max" {
            return Err(format!("unknown name `{name}`"));
        }
        self.expect(Token::LParen)?;
        self.enter()?;
        let mut args = vec![self.expression()?];
        while self.peek() == Some(&Token::Comma) {
            self.pos += 1;
            args.push(self.expression()?);
        }
        self.expect(Token::RParen)?;
        self.depth -= 1;
        if UNARY.contains(&name) && args.len() != 1 {
            return Err(format!("`{name}` takes one argument"));
        }
        let x = args[0];
        Ok(match name {
            "sqrt" if x < 0.0 => return Err("square root of a negative number".to_string()),
            "sqrt" => x.sqrt(),
            "abs" => x.abs(),
            "round" => x.round(),
            "floor" => x.floor(),
            "ceil" => x.ceil(),
            "ln" | "log10" if x <= 0.0 => {
                return Err(format!("`{name}` of a number that is not positive"));
            }
            "ln" => x.ln(),
            "log10" => x.log10(),
            "exp" => x.exp(),
            "sin" => x.sin(),
            "cos" => x.cos(),
            "tan" => x.tan(),
            "min" => args.iter().copied().fold(f64::INFINITY, f64::min),
            _ => args.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calc(s: &str) -> f64 {
        calculate(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn arithmetic() {
        assert_eq!(calc("1 + 2 * 3"), 7.0);
        assert_eq!(calc("(1 + 2) * 3"), 9.0);
        assert_eq!(calc("10 / 4"), 2.5);
        assert_eq!(calc("10 % 4"), 2.0);
        assert_eq!(calc("2 ^ 10"), 1024.0);
        assert_eq!(calc("2 ** 3 ** 2"), 512.0);
        assert_eq!(calc("-2 ^ 2"), -4.0);
        assert_eq!(calc("2 ^ -1"), 0.5);
        assert_eq!(calc("--3"), 3.0);
        assert_eq!(calc("+3 - -3"), 6.0);
        assert_eq!(calc(".5 + 1.25e2 + 2E-1"), 125.7);
        assert_eq!(calc("1 - 2 - 3"), -4.0);
        assert_eq!(calc("8 / 2 / 2"), 2.0);
    }

    #[test]
    fn functions_and_constants() {
        assert_eq!(calc("sqrt(16) + abs(-2)"), 6.0);
        assert_eq!(calc("min(3, 1, 2) + max(4, 5)"), 6.0);
        assert_eq!(calc("round(2.5) + floor(1.9) + ceil(1.1)"), 6.0);
        assert!((calc("pi") - std::f64::consts::PI).abs() < 1e-12);
        assert!((calc("2 * e") - 2.0 * std::f64::consts::E).abs() < 1e-12);
        assert_eq!(calc("log10(1000)"), 3.0);
        assert_eq!(calc("ln(1)"), 0.0);
        assert_eq!(calc("SQRT(4)"), 2.0);
    }

    #[test]
    fn errors() {
        for bad in [
            "",
            "   ",
            "1 / 0",
            "5 % 0",
            "1 +",
            "(1 + 2",
            "1 + 2)",
            "2 3",
            "foo(1)",
            "sqrt(-1)",
            "sqrt(1, 2)",
            "min()",
            "1..2",
            "2e",
            "10 ^ 400",
            "ln(0)",
            "__import__('os')",
            "1; 2",
            "pi(1)",
        ] {
            assert!(calculate(bad).is_err(), "{bad:?} should fail");
        }
        assert_eq!(calculate("1 / 0").unwrap_err(), "division by zero");
    }

    #[test]
    fn limits() {
        let long = "1+".repeat(600) + "1";
        assert!(calculate(&long).unwrap_err().contains("longer"));
        let deep = "(".repeat(100) + "1" + &")".repeat(100);
        assert!(calculate(&deep).unwrap_err().contains("nested"));
        let negations = "-".repeat(200) + "1";
        assert!(calculate(&negations).unwrap_err().contains("nested"));
        let ok = "(".repeat(30) + "1" + &")".repeat(30);
        assert_eq!(calc(&ok), 1.0);
    }

    #[test]
    fn random_garbage_never_panics() {
        // A small deterministic generator (xorshift) over a hostile alphabet.
        let alphabet: Vec<char> = "0123456789.eE+-*/%^(),_ abcdefghijklmnopqrstuvwxyzπ\u{0}\n"
            .chars()
            .collect();
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 40) as usize;
            let s: String = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            if let Ok(v) = calculate(&s) {
                assert!(v.is_finite(), "{s:?} gave {v}");
            }
        }
    }

    #[test]
    fn builtin_specs() {
        for name in BUILTIN_TOOLS {
            let spec = builtin_tool(name).unwrap();
            assert_eq!(spec.name, *name);
            assert_eq!(spec.parameters["type"], "object");
            assert!(
                !spec.parameters["properties"]
                    .as_object()
                    .unwrap()
                    .is_empty()
            );
        }
        assert_eq!(
            builtin_tool("calculator").unwrap().parameters["required"],
            json!(["expression"])
        );
        assert_eq!(
            builtin_tool("http_get").unwrap().parameters["required"],
            json!(["url"])
        );
        assert!(builtin_tool("shell").is_none());
    }

    #[test]
    fn runs_builtin_tools() {
        let call = |name: &str, arguments: Value| ToolCall {
            id: "c".into(),
            name: name.into(),
            arguments,
        };
        assert_eq!(
            run_builtin_tool(&call("calculator", json!({"expression": "6*7"})), 0),
            Some(Ok("42".to_string()))
        );
        assert_eq!(
            run_builtin_tool(&call("calculator", json!({"expression": "1/4"})), 0),
            Some(Ok("0.25".to_string()))
        );
        assert!(matches!(
            run_builtin_tool(&call("calculator", json!({})), 0),
            Some(Err(_))
        ));
        assert_eq!(
            run_builtin_tool(&call("current_time", json!({})), 1_700_000_000_000),
            Some(Ok("2023-11-14T22:13:20.000Z".to_string()))
        );
        assert!(matches!(
            run_builtin_tool(
                &call("current_time", json!({"timezone": "Europe/Paris"})),
                0
            ),
            Some(Err(_))
        ));
        assert_eq!(
            run_builtin_tool(&call("http_get", json!({"url": "x"})), 0),
            None
        );
        assert_eq!(run_builtin_tool(&call("nope", json!({})), 0), None);
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(format_current_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_current_time(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(
            format_current_time(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            format_current_time(4_107_542_399_123),
            "2100-02-28T23:59:59.123Z"
        );
        assert_eq!(
            format_current_time(1_735_689_600_000),
            "2025-01-01T00:00:00.000Z"
        );
        // Extremes do not panic.
        let _ = format_current_time(i64::MAX);
        let _ = format_current_time(i64::MIN);
    }

    #[test]
    fn truncates_on_char_boundaries() {
        assert_eq!(truncate_utf8("héllo", 2), "h");
        assert_eq!(truncate_utf8("héllo", 3), "hé");
        assert_eq!(truncate_utf8("abc", 10), "abc");

        let small = truncate_http_body(b"hello");
        assert_eq!(small, ("hello".to_string(), false));

        // A 3-byte character straddling the cap is dropped whole.
        let mut body = vec![b'a'; HTTP_GET_MAX_BYTES - 1];
        body.extend_from_slice("€".as_bytes());
        let (text, cut) = truncate_http_body(&body);
        assert!(cut);
        assert_eq!(text.len(), HTTP_GET_MAX_BYTES - 1);

        // Invalid bytes become U+FFFD and the result still fits the cap.
        let (text, cut) = truncate_http_body(&vec![0xFF; HTTP_GET_MAX_BYTES]);
        assert!(text.len() <= HTTP_GET_MAX_BYTES);
        assert!(cut);
    }
}
