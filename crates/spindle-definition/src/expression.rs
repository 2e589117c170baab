//! Templates (`"Hello {{ trigger.name }}"`) and expressions (`steps.a.output.score >= 70`).
//!
//! Every `{{ … }}` segment and every expression is parsed by minijinja's expression
//! parser, rewritten so that comparisons, `in` and `*` follow Spindle's rules (below),
//! and evaluated by minijinja with a fuel limit. There are no statements (`{% %}`), so a
//! template can neither loop nor define anything; it sees only the context it is given.
//!
//! Semantics chosen for the edge cases:
//! - Access is null-safe: a missing field, or any field of `null` or of a missing value,
//!   is `null` (`steps.nope.output.x` is `null`, never an error).
//! - `==`/`!=` never coerce types: `"5" == 5` is false, `1 == 1.0` is true, and a missing
//!   value equals `none`/`null`.
//! - `<`, `<=`, `>`, `>=` compare two numbers or two strings. If either side is null or
//!   missing the comparison is **false** (so `score >= 70` and `score < 70` are both false
//!   when `score` is missing). Any other mix (string with number, booleans, lists) is an
//!   evaluation error naming both types.
//! - `x in y`: `y` a list (item equality as `==`), an object (key), or a string
//!   (substring); `y` null or missing gives false; anything else is an error.
//! - `x | length` (also `count`) is 0 for null/missing.
//! - Arithmetic follows minijinja (`null + 1` is an error); repeating a string or list
//!   with `*` is limited to [`MAX_REPEAT_LEN`] elements (counting nested items and the
//!   characters of strings).
//!
//! Bounded work. Fuel counts the instructions an expression runs, so the aim is that no
//! one instruction does more than about the size of its operands plus
//! [`MAX_VALUE_SIZE`] (comparing or printing a big value costs its size, once per
//! instruction). On top of fuel:
//! - an expression may nest at most [`MAX_EXPRESSION_DEPTH`] operators and brackets,
//!   checked on the text before minijinja parses it (`-` and `not` chains recurse
//!   without a limit in its parser, long chains build an AST our rewriter recurses over,
//!   and the components run on a 1 MiB wasm stack);
//! - `*` counts the nested items of a list it repeats, so one instruction cannot build
//!   a list that refers to a big value a hundred thousand times;
//! - `join` and `replace`, whose output is the product of two sizes, and every
//!   expression's result and rendered template are limited to [`MAX_VALUE_SIZE`];
//! - builtins whose work is not bounded by their operands are not available: `batch`,
//!   `slice`, `indent` and `format` allocate by a numeric argument (`[1] | batch(10**18)`
//!   panics), and `map`, `select`, `reject`, `selectattr`, `rejectattr` and `groupby` run
//!   other filters once per item.

use std::collections::HashSet;
use std::sync::OnceLock;

use minijinja::machinery::ast::{BinOpKind, CallArg, CompareOpKind, Expr, UnaryOpKind};
use minijinja::value::{Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, UndefinedBehavior};

/// Longest template string or expression accepted, in bytes.
pub const MAX_EXPRESSION_LEN: usize = 10_000;
/// Instructions one expression may execute before it is stopped.
pub const EXPRESSION_FUEL: u64 = 50_000;
/// Longest string or list that `*` may build.
pub const MAX_REPEAT_LEN: usize = 100_000;
/// Deepest nesting of operators and brackets in one expression (see [`check_depth`]).
pub const MAX_EXPRESSION_DEPTH: usize = 100;
/// Largest value `join` or `replace` may build, an expression may return and a template
/// may render to: one per value (number, string, list, object, …) plus the bytes of
/// its strings.
pub const MAX_VALUE_SIZE: usize = 8 << 20;

/// Why a template or expression could not be parsed or evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The text is not a valid template or expression.
    #[error("syntax error: {0}")]
    Syntax(String),
    /// The expression parsed but failed while running (type error, out of fuel, …).
    #[error("evaluation error: {0}")]
    Evaluation(String),
    /// The text is longer than [`MAX_EXPRESSION_LEN`].
    #[error("too long: {0} bytes (limit {MAX_EXPRESSION_LEN})")]
    TooLong(usize),
}

/// One piece of a template string: literal text or the expression inside `{{ … }}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Segment<'a> {
    Text(&'a str),
    Expression(&'a str),
}

/// Splits a template into text and `{{ … }}` segments; `{%` and `{#` are refused.
fn split_template(s: &str) -> Result<Vec<Segment<'_>>, TemplateError> {
    check_len(s)?;
    let bytes = s.as_bytes();
    let mut segments = Vec::new();
    let mut text_start = 0;
    let mut i = 0;
    while i + 1 < bytes.len() {
        if bytes[i] != b'{' {
            i += 1;
            continue;
        }
        match bytes[i + 1] {
            b'{' => {}
            b'%' | b'#' => {
                return Err(TemplateError::Syntax(format!(
                    "`{}` at byte {i}: only `{{{{ … }}}}` expressions are supported \
                     (write {{{{ \"{}\" }}}} for the literal text)",
                    &s[i..i + 2],
                    &s[i..i + 2]
                )));
            }
            _ => {
                i += 1;
                continue;
            }
        }
        if text_start < i {
            segments.push(Segment::Text(&s[text_start..i]));
        }
        let inner_start = i + 2;
        let inner_end = find_expression_end(bytes, inner_start).ok_or_else(|| {
            TemplateError::Syntax(format!("`{{{{` at byte {i} is never closed with `}}}}`"))
        })?;
        segments.push(Segment::Expression(&s[inner_start..inner_end]));
        i = inner_end + 2;
        text_start = i;
    }
    if text_start < s.len() {
        segments.push(Segment::Text(&s[text_start..]));
    }
    Ok(segments)
}

/// Finds the `}}` that closes an expression starting at `from`, skipping string literals
/// and nested brackets (so `{{ {"a": {"b": 1}} }}` works).
fn find_expression_end(bytes: &[u8], from: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<u8> = None;
    let mut i = from;
    while i < bytes.len() {
        let c = bytes[i];
        if let Some(q) = quote {
            if c == b'\\' {
                i += 1;
            } else if c == q {
                quote = None;
            }
        } else {
            match c {
                b'"' | b'\'' => quote = Some(c),
                b'{' | b'[' | b'(' => depth += 1,
                b'}' if depth == 0 && bytes.get(i + 1) == Some(&b'}') => return Some(i),
                b'}' | b']' | b')' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

fn check_len(s: &str) -> Result<(), TemplateError> {
    if s.len() > MAX_EXPRESSION_LEN {
        Err(TemplateError::TooLong(s.len()))
    } else {
        Ok(())
    }
}

/// An expression parsed and rewritten to Spindle's semantics, plus the steps
/// and the top-level context names it reads.
struct Rewritten {
    source: String,
    step_references: Vec<String>,
    names: HashSet<String>,
}

/// A rewritten expression compiled by minijinja, ready to run: what a syntax check
/// accepts, reference lists read and a run evaluates is this one thing, since a few
/// texts minijinja's parser accepts rewrite to source it refuses (` and /not |not `).
struct Compiled {
    program: minijinja::Expression<'static, 'static>,
    step_references: Vec<String>,
    names: HashSet<String>,
}

/// Refuses, before minijinja parses them, expressions that nest deeper than
/// [`MAX_EXPRESSION_DEPTH`] and expressions with `}}` outside brackets (minijinja's
/// expression lexer takes that for the end of a `{{ … }}` it never opened and panics
/// with "empty lexer stack": `not }}{{`, or `) ( }}` inside a template's `{{ … }}`).
/// The depth is over-estimated from the text: brackets, plus within each
/// bracket the operators of the current item (`,` and `:` start a new one), since
/// operators at one level chain into one branch of the AST (`1 + 1 + …`, `- - …`,
/// `a.b.c…`, `x | f | g…`). Without this, `-` × 9 000 overflows the stack in
/// minijinja's parser (its recursion guard covers brackets only) and a chain of a few
/// thousand `.a` overflows it in the rewriter (both trapped the wasm components). The
/// limit is seldom what refuses an expression: the fully parenthesised rewritten source
/// already fails minijinja's recursion guard beyond about 40 levels of chaining.
fn check_depth(expression: &str) -> Result<(), TemplateError> {
    let bytes = expression.as_bytes();
    // The depth units of the current item of each open bracket (an open bracket counts
    // one in its own level; a closed one adds its units to the item it is part of).
    let mut levels: Vec<usize> = vec![0];
    let mut depth = 0usize;
    // minijinja's count of open brackets: unmatched closers make it negative.
    let mut balance = 0isize;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let mut unit = false;
        if balance == 0 && bytes[i..].starts_with(b"}}") {
            return Err(TemplateError::Syntax(format!(
                "unexpected `}}}}` at byte {i} (outside brackets)"
            )));
        }
        match c {
            b'"' | b'\'' => {
                // Skip the string literal (an unclosed one is the parser's to report).
                i += 1;
                while i < bytes.len() && bytes[i] != c {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'(' | b'[' | b'{' => {
                balance += 1;
                levels.push(1);
                depth += 1;
            }
            b')' | b']' | b'}' => {
                balance -= 1;
                if levels.len() > 1 {
                    let inner = levels.pop().unwrap_or(0);
                    if let Some(top) = levels.last_mut() {
                        *top += inner;
                    }
                }
            }
            b',' | b':' => {
                let bracket = usize::from(levels.len() > 1);
                if let Some(top) = levels.last_mut() {
                    depth -= *top - bracket;
                    *top = bracket;
                }
            }
            b'+' | b'-' | b'*' | b'/' | b'%' | b'~' | b'|' | b'.' | b'<' | b'>' | b'=' | b'!' => {
                unit = true;
                // `==`, `!=`, `<=`, `>=`, `**` and `//` are one operator.
                if matches!(
                    (c, bytes.get(i + 1)),
                    (b'=' | b'!' | b'<' | b'>', Some(b'='))
                        | (b'*', Some(b'*'))
                        | (b'/', Some(b'/'))
                ) {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while bytes
                    .get(i + 1)
                    .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
                {
                    i += 1;
                }
                unit = matches!(
                    &expression[start..=i],
                    "not" | "and" | "or" | "if" | "else" | "is" | "in"
                );
            }
            _ => {}
        }
        if unit {
            depth += 1;
            if let Some(top) = levels.last_mut() {
                *top += 1;
            }
        }
        if depth > MAX_EXPRESSION_DEPTH {
            return Err(TemplateError::Syntax(format!(
                "the expression nests more than {MAX_EXPRESSION_DEPTH} operators and brackets deep"
            )));
        }
        i += 1;
    }
    Ok(())
}

fn rewrite(expression: &str) -> Result<Rewritten, TemplateError> {
    check_len(expression)?;
    check_depth(expression)?;
    let parsed = minijinja::machinery::parse_expr(expression)
        .map_err(|e| TemplateError::Syntax(describe(&e)))?;
    let mut rewriter = Rewriter::default();
    rewriter.expr(&parsed);
    Ok(Rewritten {
        source: rewriter.out,
        step_references: rewriter.step_references,
        names: rewriter.names,
    })
}

fn compile(expression: &str) -> Result<Compiled, TemplateError> {
    let rewritten = rewrite(expression)?;
    let program = environment()
        .compile_expression_owned(rewritten.source)
        .map_err(|e| TemplateError::Syntax(describe(&e)))?;
    Ok(Compiled {
        program,
        step_references: rewritten.step_references,
        names: rewritten.names,
    })
}

fn describe(e: &Error) -> String {
    match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    }
}

/// Prints an expression AST back to minijinja source, fully parenthesised, with
/// comparisons, `in` and `*` replaced by calls to Spindle's helper functions,
/// arithmetic results checked to be finite and every filter's result made
/// concrete (see `finite` and `concrete`).
#[derive(Default)]
struct Rewriter {
    out: String,
    step_references: Vec<String>,
    /// Every variable the expression names: an expression declares none, so
    /// each is a top-level name of the context.
    names: HashSet<String>,
}

impl Rewriter {
    fn expr(&mut self, e: &Expr<'_>) {
        match e {
            Expr::Var(v) => {
                self.names.insert(v.id.to_string());
                self.out.push_str(v.id);
            }
            Expr::Const(c) => self.constant(&c.value),
            Expr::Slice(s) => {
                // minijinja's own slicing panics on `[][::-1]` (see `slice`).
                self.out.push_str("__slice(");
                self.expr(&s.expr);
                for bound in [&s.start, &s.stop, &s.step] {
                    self.out.push_str(", ");
                    match bound {
                        Some(e) => self.expr(e),
                        None => self.out.push_str("none"),
                    }
                }
                self.out.push(')');
            }
            Expr::UnaryOp(u) => {
                self.out.push_str(match u.op {
                    UnaryOpKind::Not => "(not ",
                    UnaryOpKind::Neg => "(-",
                });
                self.paren(&u.expr);
                self.out.push(')');
            }
            Expr::BinOp(b) => self.binop(b.op, &b.left, &b.right),
            Expr::Compare(c) => {
                self.out.push('(');
                let mut left = &c.expr;
                for (i, op) in c.ops.iter().enumerate() {
                    if i > 0 {
                        self.out.push_str(" and ");
                    }
                    match op.op {
                        CompareOpKind::NotIn => {
                            self.out.push_str("(not ");
                            self.call("__in", left, &op.expr, None);
                            self.out.push(')');
                        }
                        kind => self.binop(compare_to_binop(kind), left, &op.expr),
                    }
                    left = &op.expr;
                }
                self.out.push(')');
            }
            Expr::IfExpr(i) => {
                self.out.push('(');
                self.paren(&i.true_expr);
                self.out.push_str(" if ");
                self.paren(&i.test_expr);
                if let Some(f) = &i.false_expr {
                    self.out.push_str(" else ");
                    self.paren(f);
                }
                self.out.push(')');
            }
            Expr::Filter(f) => {
                self.out.push_str("__value((");
                if let Some(inner) = &f.expr {
                    self.paren(inner);
                }
                self.out.push_str(" | ");
                self.out.push_str(f.name);
                self.args(&f.args);
                self.out.push_str("))");
            }
            Expr::Test(t) => {
                self.out.push('(');
                self.paren(&t.expr);
                self.out.push_str(" is ");
                self.out.push_str(t.name);
                self.args(&t.args);
                self.out.push(')');
            }
            Expr::GetAttr(g) => {
                if let Expr::Var(v) = &g.expr
                    && v.id == "steps"
                {
                    self.step_references.push(g.name.to_string());
                }
                self.paren(&g.expr);
                self.out.push('.');
                self.out.push_str(g.name);
            }
            Expr::GetItem(g) => {
                if let (Expr::Var(v), Expr::Const(c)) = (&g.expr, &g.subscript_expr)
                    && v.id == "steps"
                    && let Some(name) = c.value.as_str()
                {
                    self.step_references.push(name.to_string());
                }
                self.paren(&g.expr);
                self.out.push('[');
                self.expr(&g.subscript_expr);
                self.out.push(']');
            }
            Expr::Call(c) => {
                self.paren(&c.expr);
                if c.args.is_empty() {
                    self.out.push_str("()");
                } else {
                    self.args(&c.args);
                }
            }
            Expr::List(l) => {
                self.out.push('[');
                for (i, item) in l.items.iter().enumerate() {
                    if i > 0 {
                        self.out.push_str(", ");
                    }
                    self.expr(item);
                }
                self.out.push(']');
            }
            Expr::Map(m) => {
                self.out.push('{');
                for (i, (k, v)) in m.keys.iter().zip(&m.values).enumerate() {
                    if i > 0 {
                        self.out.push_str(", ");
                    }
                    self.expr(k);
                    self.out.push_str(": ");
                    self.expr(v);
                }
                self.out.push('}');
            }
        }
    }

    /// Prints a sub-expression in parentheses (atoms need none, but they do no harm).
    fn paren(&mut self, e: &Expr<'_>) {
        if matches!(e, Expr::Var(_)) {
            self.expr(e);
        } else {
            self.out.push('(');
            self.expr(e);
            self.out.push(')');
        }
    }

    fn call(&mut self, function: &str, a: &Expr<'_>, b: &Expr<'_>, extra: Option<&str>) {
        self.out.push_str(function);
        self.out.push('(');
        self.expr(a);
        self.out.push_str(", ");
        self.expr(b);
        if let Some(extra) = extra {
            self.out.push_str(", \"");
            self.out.push_str(extra);
            self.out.push('"');
        }
        self.out.push(')');
    }

    fn binop(&mut self, op: BinOpKind, left: &Expr<'_>, right: &Expr<'_>) {
        let symbol = match op {
            BinOpKind::Eq => return self.call("__eq", left, right, None),
            BinOpKind::Ne => {
                self.out.push_str("(not ");
                self.call("__eq", left, right, None);
                self.out.push(')');
                return;
            }
            BinOpKind::Lt => return self.call("__order", left, right, Some("<")),
            BinOpKind::Lte => return self.call("__order", left, right, Some("<=")),
            BinOpKind::Gt => return self.call("__order", left, right, Some(">")),
            BinOpKind::Gte => return self.call("__order", left, right, Some(">=")),
            BinOpKind::In => return self.call("__in", left, right, None),
            BinOpKind::Mul => {
                self.out.push_str("__finite(");
                self.call("__mul", left, right, None);
                self.out.push(')');
                return;
            }
            BinOpKind::ScAnd => " and ",
            BinOpKind::ScOr => " or ",
            BinOpKind::Concat => " ~ ",
            BinOpKind::Add => " + ",
            BinOpKind::Sub => " - ",
            BinOpKind::Div => " / ",
            BinOpKind::FloorDiv => " // ",
            BinOpKind::Rem => " % ",
            BinOpKind::Pow => " ** ",
        };
        let arithmetic = !matches!(op, BinOpKind::ScAnd | BinOpKind::ScOr | BinOpKind::Concat);
        if arithmetic {
            self.out.push_str("__finite(");
        }
        self.out.push('(');
        self.paren(left);
        self.out.push_str(symbol);
        self.paren(right);
        self.out.push(')');
        if arithmetic {
            self.out.push(')');
        }
    }

    fn args(&mut self, args: &[CallArg<'_>]) {
        if args.is_empty() {
            return;
        }
        self.out.push('(');
        for (i, arg) in args.iter().enumerate() {
            if i > 0 {
                self.out.push_str(", ");
            }
            match arg {
                CallArg::Pos(e) => self.expr(e),
                CallArg::Kwarg(name, e) => {
                    self.out.push_str(name);
                    self.out.push('=');
                    self.expr(e);
                }
                CallArg::PosSplat(e) => {
                    self.out.push('*');
                    self.paren(e);
                }
                CallArg::KwargSplat(e) => {
                    self.out.push_str("**");
                    self.paren(e);
                }
            }
        }
        self.out.push(')');
    }

    fn constant(&mut self, v: &Value) {
        match v.kind() {
            ValueKind::None | ValueKind::Undefined => self.out.push_str("none"),
            ValueKind::Bool => self
                .out
                .push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number if v.is_integer() => {
                self.out.push('(');
                self.out.push_str(&v.to_string());
                self.out.push(')');
            }
            ValueKind::Number => {
                let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
                if f.is_finite() {
                    self.out.push_str(&format!("({f:?})"));
                } else {
                    self.out.push_str("none");
                }
            }
            ValueKind::String => {
                let s = v.as_str().unwrap_or_default();
                self.out
                    .push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
            }
            ValueKind::Seq => {
                self.out.push('[');
                if let Ok(items) = v.try_iter() {
                    for (i, item) in items.enumerate() {
                        if i > 0 {
                            self.out.push_str(", ");
                        }
                        self.constant(&item);
                    }
                }
                self.out.push(']');
            }
            ValueKind::Map => {
                self.out.push('{');
                if let Ok(keys) = v.try_iter() {
                    for (i, key) in keys.enumerate() {
                        if i > 0 {
                            self.out.push_str(", ");
                        }
                        let value = v.get_item(&key).unwrap_or_default();
                        self.constant(&key);
                        self.out.push_str(": ");
                        self.constant(&value);
                    }
                }
                self.out.push('}');
            }
            _ => self.out.push_str("none"),
        }
    }
}

fn compare_to_binop(kind: CompareOpKind) -> BinOpKind {
    match kind {
        CompareOpKind::Eq => BinOpKind::Eq,
        CompareOpKind::Ne => BinOpKind::Ne,
        CompareOpKind::Lt => BinOpKind::Lt,
        CompareOpKind::Lte => BinOpKind::Lte,
        CompareOpKind::Gt => BinOpKind::Gt,
        CompareOpKind::Gte => BinOpKind::Gte,
        CompareOpKind::In | CompareOpKind::NotIn => BinOpKind::In,
    }
}

/// The JSON name of a value's type, for error messages.
fn type_name(v: &Value) -> &'static str {
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => "null",
        ValueKind::Bool => "boolean",
        ValueKind::Number => "number",
        ValueKind::String => "string",
        ValueKind::Seq | ValueKind::Iterable => "list",
        ValueKind::Map => "object",
        _ => "value",
    }
}

fn is_null(v: &Value) -> bool {
    v.is_undefined() || v.is_none()
}

fn invalid(message: String) -> Error {
    Error::new(ErrorKind::InvalidOperation, message)
}

fn equals(a: &Value, b: &Value) -> bool {
    if is_null(a) || is_null(b) {
        return is_null(a) && is_null(b);
    }
    a.kind() == b.kind() && a == b
}

fn order(a: Value, b: Value, op: &str) -> Result<bool, Error> {
    if is_null(&a) || is_null(&b) {
        return Ok(false);
    }
    let comparable = matches!(
        (a.kind(), b.kind()),
        (ValueKind::Number, ValueKind::Number) | (ValueKind::String, ValueKind::String)
    );
    if !comparable {
        return Err(invalid(format!(
            "cannot compare {} with {} using `{op}`",
            type_name(&a),
            type_name(&b)
        )));
    }
    let ordering = a.cmp(&b);
    Ok(match op {
        "<" => ordering.is_lt(),
        "<=" => ordering.is_le(),
        ">" => ordering.is_gt(),
        _ => ordering.is_ge(),
    })
}

fn contains(needle: Value, haystack: Value) -> Result<bool, Error> {
    match haystack.kind() {
        ValueKind::Undefined | ValueKind::None => Ok(false),
        ValueKind::String => match needle.as_str() {
            Some(n) => Ok(haystack.as_str().unwrap_or_default().contains(n)),
            None => Err(invalid(format!(
                "`in` a string needs a string on the left, got {}",
                type_name(&needle)
            ))),
        },
        ValueKind::Seq | ValueKind::Iterable => {
            Ok(haystack.try_iter()?.any(|item| equals(&item, &needle)))
        }
        ValueKind::Map => Ok(!is_null(&haystack.get_item(&needle)?)
            || haystack.try_iter()?.any(|key| equals(&key, &needle))),
        _ => Err(invalid(format!(
            "`in` needs a list, object or string on the right, got {}",
            type_name(&haystack)
        ))),
    }
}

fn multiply(a: Value, b: Value) -> Result<Value, Error> {
    let repeat = |seq: &Value, n: &Value| -> Result<Value, Error> {
        let count = n
            .as_i64()
            .ok_or_else(|| invalid("a string or list can only be repeated by an integer".into()))?
            .max(0) as usize;
        // A string counts its characters; a list its items, nested ones included (a
        // list holding one big value must not be repeated into a list referring to it
        // a hundred thousand times: printing or comparing that would cost the product).
        let len = match seq.as_str() {
            Some(s) => s.chars().count(),
            None => value_size(seq, MAX_REPEAT_LEN.saturating_add(1)).map_or(usize::MAX, |n| n - 1),
        };
        if len.saturating_mul(count) > MAX_REPEAT_LEN {
            return Err(invalid(format!(
                "repeating would build more than {MAX_REPEAT_LEN} elements"
            )));
        }
        if let Some(s) = seq.as_str() {
            return Ok(Value::from(s.repeat(count)));
        }
        let items: Vec<Value> = seq.try_iter()?.collect();
        // Bounded by the items to build, not by `count`: `[] * 10**18` builds nothing.
        let repeated: Vec<Value> = items
            .iter()
            .cloned()
            .cycle()
            .take(items.len() * count)
            .collect();
        Ok(Value::from(repeated))
    };
    match (a.kind(), b.kind()) {
        (ValueKind::Number, ValueKind::Number) => {
            if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64())
                && let Some(product) = x.checked_mul(y)
            {
                return Ok(Value::from(product));
            }
            let x = f64::try_from(a)?;
            let y = f64::try_from(b)?;
            Ok(Value::from(x * y))
        }
        (ValueKind::String | ValueKind::Seq, ValueKind::Number) => repeat(&a, &b),
        (ValueKind::Number, ValueKind::String | ValueKind::Seq) => repeat(&b, &a),
        _ => Err(invalid(format!(
            "cannot multiply {} by {}",
            type_name(&a),
            type_name(&b)
        ))),
    }
}

/// `x[start:stop:step]` with Python's rules, on a string's characters or a list's
/// items (null or missing gives an empty list, as in minijinja). minijinja's own
/// slicing indexes an empty value when stepping backwards (`[][::-1]` panics) and
/// negates the step unchecked.
fn slice(value: Value, start: Value, stop: Value, step: Value) -> Result<Value, Error> {
    let bound = |v: Value, what: &str| -> Result<Option<i128>, Error> {
        if is_null(&v) {
            return Ok(None);
        }
        i64::try_from(v)
            .map(|n| Some(i128::from(n)))
            .map_err(|_| invalid(format!("a slice's {what} must be an integer")))
    };
    let (start, stop) = (bound(start, "start")?, bound(stop, "stop")?);
    let step = bound(step, "step")?.unwrap_or(1);
    if step == 0 {
        return Err(invalid("cannot slice by step size of 0".into()));
    }
    // CPython's PySlice_AdjustIndices.
    let indices = |len: usize| -> Vec<usize> {
        let len = len as i128;
        let (lower, upper) = if step < 0 { (-1, len - 1) } else { (0, len) };
        let adjust = |bound: Option<i128>, default: i128| match bound {
            None => default,
            Some(b) if b < 0 => (b + len).max(lower),
            Some(b) => b.min(upper),
        };
        let (mut i, stop) = if step < 0 {
            (adjust(start, upper), adjust(stop, lower))
        } else {
            (adjust(start, lower), adjust(stop, upper))
        };
        let mut out = Vec::new();
        while (step > 0 && i < stop) || (step < 0 && i > stop) {
            out.push(i as usize);
            i += step;
        }
        out
    };
    if is_null(&value) {
        return Ok(Value::from(Vec::<Value>::new()));
    }
    if let Some(s) = value.as_str() {
        let chars: Vec<char> = s.chars().collect();
        return Ok(Value::from(
            indices(chars.len())
                .into_iter()
                .map(|i| chars[i])
                .collect::<String>(),
        ));
    }
    if matches!(value.kind(), ValueKind::Seq | ValueKind::Iterable) {
        let items: Vec<Value> = value.try_iter()?.collect();
        return Ok(Value::from(
            indices(items.len())
                .into_iter()
                .map(|i| items[i].clone())
                .collect::<Vec<_>>(),
        ));
    }
    Err(invalid(format!("a {} cannot be sliced", type_name(&value))))
}

/// `x is divisibleby(n)`: minijinja's test divides by zero (and `i128::MIN` by -1)
/// with `%`, which panics; here those are simply not divisible.
fn divisible_by(v: Value, by: Value) -> bool {
    if v.is_integer() && by.is_integer() {
        if let (Ok(a), Ok(b)) = (i128::try_from(v), i128::try_from(by)) {
            return a.checked_rem(b) == Some(0);
        }
        return false;
    }
    match (v.kind(), by.kind()) {
        (ValueKind::Number, ValueKind::Number) => match (f64::try_from(v), f64::try_from(by)) {
            (Ok(a), Ok(b)) => a % b == 0.0,
            _ => false,
        },
        _ => false,
    }
}

/// The size of `v` as [`MAX_VALUE_SIZE`] counts it (one per value, nested ones
/// included, plus the bytes of strings), or `None` as soon as it passes `limit`, so
/// that measuring a value that shares a big one many times stays cheap too.
fn value_size(v: &Value, limit: usize) -> Option<usize> {
    fn walk(v: &Value, used: &mut usize, limit: usize) -> bool {
        *used += 1 + v.as_str().map_or(0, str::len);
        if *used > limit {
            return false;
        }
        match v.kind() {
            ValueKind::Seq | ValueKind::Iterable => match v.try_iter() {
                Ok(items) => {
                    for item in items {
                        if !walk(&item, used, limit) {
                            return false;
                        }
                    }
                    true
                }
                Err(_) => true,
            },
            ValueKind::Map => match v.try_iter() {
                Ok(keys) => {
                    for key in keys {
                        let value = v.get_item(&key).unwrap_or_default();
                        if !walk(&key, used, limit) || !walk(&value, used, limit) {
                            return false;
                        }
                    }
                    true
                }
                Err(_) => true,
            },
            _ => true,
        }
    }
    let mut used = 0;
    walk(v, &mut used, limit).then_some(used)
}

/// A filter's result as a concrete value. `chain` and `zip` can answer a lazy
/// iterable, which serialises to a list but is true whatever it holds (its length
/// is unknown), so `not (none | chain)` was false while the value it gives, `[]`,
/// is false to a condition; collected into a list, it is true exactly when the
/// JSON is.
fn concrete(v: Value) -> Result<Value, Error> {
    if v.kind() != ValueKind::Iterable {
        return finite(v);
    }
    if value_size(&v, MAX_VALUE_SIZE).is_none() {
        return Err(too_large("the value"));
    }
    Ok(Value::from(v.try_iter()?.collect::<Vec<_>>()))
}

/// An arithmetic or filter result, refused when it is a float that is not finite
/// (`1 / 0`, `1e308 * 10`): JSON has no such number, so the value would be `null`
/// while, inside the expression, it is true to `not` and unequal to itself.
fn finite(v: Value) -> Result<Value, Error> {
    if v.kind() == ValueKind::Number
        && !v.is_integer()
        && f64::try_from(v.clone()).is_ok_and(|f| !f.is_finite())
    {
        return Err(invalid(
            "the result is not a finite number (a division by zero or an overflow)".into(),
        ));
    }
    Ok(v)
}

fn too_large(what: &str) -> Error {
    invalid(format!(
        "{what} would be larger than {MAX_VALUE_SIZE} (bytes of text plus one per value)"
    ))
}

/// Appends `v` as text (a string as it is, anything else as minijinja prints it) to
/// `out`, failing once `out` would pass [`MAX_VALUE_SIZE`].
fn push_text(out: &mut String, v: &Value, what: &str) -> Result<(), Error> {
    struct Capped<'a>(&'a mut String);
    impl std::fmt::Write for Capped<'_> {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            if self.0.len() + s.len() > MAX_VALUE_SIZE {
                return Err(std::fmt::Error);
            }
            self.0.push_str(s);
            Ok(())
        }
    }
    let written = match v.as_str() {
        Some(s) => std::fmt::Write::write_str(&mut Capped(out), s),
        None => std::fmt::Write::write_fmt(&mut Capped(out), format_args!("{v}")),
    };
    written.map_err(|_| too_large(what))
}

/// `value | join(joiner)`: minijinja's `join` (items as text, a string's characters),
/// with its output limited to [`MAX_VALUE_SIZE`] (a long joiner between many items
/// multiplies two sizes).
fn join(v: Value, joiner: Option<Value>) -> Result<String, Error> {
    let mut separator = String::new();
    if let Some(joiner) = joiner.filter(|j| !is_null(j)) {
        push_text(&mut separator, &joiner, "the joiner")?;
    }
    let items = v
        .try_iter()
        .map_err(|_| invalid(format!("cannot join a {}", type_name(&v))))?;
    let mut out = String::new();
    for (i, item) in items.enumerate() {
        if i > 0 {
            push_text(
                &mut out,
                &Value::from(separator.as_str()),
                "the joined text",
            )?;
        }
        push_text(&mut out, &item, "the joined text")?;
    }
    Ok(out)
}

/// `text | replace(from, to)`: every occurrence of `from` replaced by `to`, with the
/// output limited to [`MAX_VALUE_SIZE`] (an empty `from` matches between characters).
fn replace(text: Value, from: Value, to: Value) -> Result<String, Error> {
    let (mut t, mut f, mut r) = (String::new(), String::new(), String::new());
    push_text(&mut t, &text, "the text")?;
    push_text(&mut f, &from, "the text to replace")?;
    push_text(&mut r, &to, "the replacement")?;
    let matches = if f.is_empty() {
        t.chars().count() + 1
    } else {
        t.matches(f.as_str()).count()
    };
    let size = (t.len() - matches.saturating_mul(f.len()).min(t.len()))
        .saturating_add(matches.saturating_mul(r.len()));
    if size > MAX_VALUE_SIZE {
        return Err(too_large("the replaced text"));
    }
    Ok(t.replace(f.as_str(), &r))
}

fn length(v: Value) -> Result<usize, Error> {
    if is_null(&v) {
        return Ok(0);
    }
    if let Some(s) = v.as_str() {
        return Ok(s.chars().count());
    }
    v.len()
        .ok_or_else(|| invalid(format!("cannot take the length of a {}", type_name(&v))))
}

/// `value | json`: the value as compact JSON text (unlike minijinja's
/// `tojson`, nothing is HTML-escaped: the text goes to a model, not a page).
fn json_text(v: Value) -> Result<String, Error> {
    serde_json::to_string(&v).map_err(|e| invalid(format!("cannot write JSON: {e}")))
}

fn environment() -> &'static Environment<'static> {
    static ENVIRONMENT: OnceLock<Environment<'static>> = OnceLock::new();
    ENVIRONMENT.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        env.set_fuel(Some(EXPRESSION_FUEL));
        env.set_recursion_limit(100);
        env.add_function("__eq", |a: Value, b: Value| equals(&a, &b));
        env.add_function("__order", order);
        env.add_function("__in", contains);
        env.add_function("__mul", multiply);
        env.add_function("__slice", slice);
        env.add_function("__value", concrete);
        env.add_function("__finite", finite);
        env.add_filter("length", length);
        env.add_filter("count", length);
        env.add_filter("json", json_text);
        env.add_filter("join", join);
        env.add_filter("replace", replace);
        env.add_test("divisibleby", divisible_by);
        // Work not bounded by the operands (see the module's notes on bounded work).
        for filter in [
            "batch",
            "slice",
            "indent",
            "format",
            "map",
            "select",
            "reject",
            "selectattr",
            "rejectattr",
            "groupby",
        ] {
            env.remove_filter(filter);
        }
        env
    })
}

fn run(compiled: &Compiled, context: &Value) -> Result<serde_json::Value, TemplateError> {
    let value = compiled
        .program
        .eval(context)
        .map_err(|e| TemplateError::Evaluation(describe(&e)))?;
    to_json(&value)
}

fn to_json(value: &Value) -> Result<serde_json::Value, TemplateError> {
    if value.is_undefined() {
        return Ok(serde_json::Value::Null);
    }
    if value_size(value, MAX_VALUE_SIZE).is_none() {
        return Err(TemplateError::Evaluation(describe(&too_large("the value"))));
    }
    serde_json::to_value(value).map_err(|e| TemplateError::Evaluation(e.to_string()))
}

/// Evaluates one expression (no `{{ }}`) against a JSON context and returns its JSON value.
pub fn evaluate(
    expression: &str,
    context: &serde_json::Value,
) -> Result<serde_json::Value, TemplateError> {
    let compiled = compile(expression)?;
    run(&compiled, &narrow(context, &compiled.names))
}

/// Adds the top-level context names the expressions inside `template` read
/// (one that does not parse adds none: rendering it reports the error).
fn template_names(template: &serde_json::Value, names: &mut HashSet<String>) {
    match template {
        serde_json::Value::String(s) => {
            for segment in split_template(s).into_iter().flatten() {
                if let Segment::Expression(e) = segment
                    && let Ok(rewritten) = rewrite(e)
                {
                    names.extend(rewritten.names);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| template_names(i, names)),
        serde_json::Value::Object(map) => map.values().for_each(|v| template_names(v, names)),
        _ => {}
    }
}

/// The part of a JSON object `context` under `names`, for minijinja. A run's
/// context carries its inputs and every step's output; converting all of it
/// for each template would cost time in proportion to the run's data,
/// however little the template reads of it. Names a template reads but the
/// context lacks stay undefined, as they would with the whole context.
fn narrow(context: &serde_json::Value, names: &HashSet<String>) -> Value {
    match context.as_object() {
        Some(map) => names
            .iter()
            .filter_map(|name| {
                map.get(name)
                    .map(|v| (name.clone(), Value::from_serialize(v)))
            })
            .collect(),
        None => Value::from_serialize(context),
    }
}

/// JSON truthiness: false for `null`, `false`, `0`, `""`, `[]` and `{}`; true otherwise.
pub fn is_truthy(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Null => false,
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        serde_json::Value::String(s) => !s.is_empty(),
        serde_json::Value::Array(a) => !a.is_empty(),
        serde_json::Value::Object(o) => !o.is_empty(),
    }
}

/// Renders every string inside `template`; a string that is exactly one `{{ expr }}`
/// keeps the expression's JSON type, mixed text becomes a string. Object keys are kept.
pub fn render(
    template: &serde_json::Value,
    context: &serde_json::Value,
) -> Result<serde_json::Value, TemplateError> {
    let mut names = HashSet::new();
    template_names(template, &mut names);
    let mut budget = MAX_VALUE_SIZE;
    render_value(template, &narrow(context, &names), &mut budget)
}

/// Renders `template`, taking the size of each rendered string from `budget` (the
/// whole rendered template is limited to [`MAX_VALUE_SIZE`], however many strings
/// repeat a big value).
fn render_value(
    template: &serde_json::Value,
    context: &Value,
    budget: &mut usize,
) -> Result<serde_json::Value, TemplateError> {
    Ok(match template {
        serde_json::Value::String(s) => {
            let rendered = render_string(s, context)?;
            let size = json_size(&rendered, *budget).ok_or_else(|| {
                TemplateError::Evaluation(describe(&too_large("the rendered template")))
            })?;
            *budget -= size;
            rendered
        }
        serde_json::Value::Array(items) => serde_json::Value::Array(
            items
                .iter()
                .map(|item| render_value(item, context, budget))
                .collect::<Result<_, _>>()?,
        ),
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render_value(v, context, budget)?)))
                .collect::<Result<_, TemplateError>>()?,
        ),
        other => other.clone(),
    })
}

/// [`value_size`] for JSON.
fn json_size(v: &serde_json::Value, limit: usize) -> Option<usize> {
    fn walk(v: &serde_json::Value, used: &mut usize, limit: usize) -> bool {
        *used += 1;
        let within = match v {
            serde_json::Value::String(s) => {
                *used += s.len();
                true
            }
            serde_json::Value::Array(items) => items.iter().all(|item| walk(item, used, limit)),
            serde_json::Value::Object(map) => map.iter().all(|(k, v)| {
                *used += 1 + k.len();
                walk(v, used, limit)
            }),
            _ => true,
        };
        within && *used <= limit
    }
    let mut used = 0;
    walk(v, &mut used, limit).then_some(used)
}

fn render_string(s: &str, context: &Value) -> Result<serde_json::Value, TemplateError> {
    let segments = split_template(s)?;
    let expressions = segments
        .iter()
        .filter(|s| matches!(s, Segment::Expression(_)))
        .count();
    let only_whitespace_text = segments
        .iter()
        .all(|s| !matches!(s, Segment::Text(t) if !t.trim().is_empty()));
    if expressions == 1 && only_whitespace_text {
        for segment in &segments {
            if let Segment::Expression(e) = segment {
                return run(&compile(e)?, context);
            }
        }
    }
    let mut out = String::new();
    for segment in segments {
        let piece = match segment {
            Segment::Text(t) => t.to_string(),
            Segment::Expression(e) => match run(&compile(e)?, context)? {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            },
        };
        if out.len() + piece.len() > MAX_VALUE_SIZE {
            return Err(TemplateError::Evaluation(describe(&too_large(
                "the rendered text",
            ))));
        }
        out.push_str(&piece);
    }
    Ok(serde_json::Value::String(out))
}

/// Checks that a template string parses (its `{{ … }}` segments are valid expressions).
pub fn check_template_syntax(s: &str) -> Result<(), String> {
    for segment in split_template(s).map_err(|e| e.to_string())? {
        if let Segment::Expression(e) = segment {
            compile(e).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Checks that a bare expression (a condition, switch selector or loop expression) parses.
pub fn check_expression_syntax(expression: &str) -> Result<(), String> {
    compile(expression).map(|_| ()).map_err(|e| e.to_string())
}

/// The node ids a template string reads as `steps.<id>` or `steps["<id>"]`, deduplicated.
pub fn step_references(s: &str) -> Vec<String> {
    let Ok(segments) = split_template(s) else {
        return Vec::new();
    };
    let mut ids = Vec::new();
    for segment in segments {
        if let Segment::Expression(e) = segment {
            push_unique(&mut ids, expression_step_references(e));
        }
    }
    ids
}

/// The node ids a bare expression reads as `steps.<id>` or `steps["<id>"]`, deduplicated.
pub fn expression_step_references(expression: &str) -> Vec<String> {
    let mut ids = Vec::new();
    if let Ok(compiled) = compile(expression) {
        push_unique(&mut ids, compiled.step_references);
    }
    ids
}

fn push_unique(into: &mut Vec<String>, from: Vec<String>) {
    for id in from {
        if !into.contains(&id) {
            into.push(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn context() -> serde_json::Value {
        json!({
            "trigger": {"lead": {"name": "Ada", "tags": ["vip", "new"]}},
            "steps": {
                "a": {"output": {"n": 42, "score": 80, "text": "hello", "none": null}, "status": "done"},
                "b": {"output": "plain", "status": "done"}
            },
            "previous_output": {"x": 1},
            "variables": {"region": "eu"},
            "execution": {"id": "exec-1"}
        })
    }

    fn eval(e: &str) -> Result<serde_json::Value, TemplateError> {
        evaluate(e, &context())
    }

    #[test]
    fn a_template_sees_every_name_it_reads_and_only_those_are_converted() {
        let ctx = context();
        let mut names = HashSet::new();
        let template = json!({"a": "{{ trigger.lead.name }}", "b": ["{{ variables.region }}"]});
        template_names(&template, &mut names);
        assert!(
            names.contains("trigger") && names.contains("variables"),
            "{names:?}"
        );
        assert!(
            !names.contains("steps") && !names.contains("execution"),
            "{names:?}"
        );
        assert_eq!(
            render(&template, &ctx).unwrap(),
            json!({"a": "Ada", "b": ["eu"]})
        );
        // A name the context lacks is undefined, as with the whole context.
        assert_eq!(
            render(&json!("{{ nowhere.x }}"), &ctx).unwrap(),
            json!(null)
        );
        assert_eq!(
            eval("steps.a.output.n == 42 and execution.id == 'exec-1'").unwrap(),
            json!(true)
        );
    }

    #[test]
    fn exact_expression_keeps_json_type() {
        let ctx = context();
        assert_eq!(
            render(&json!("{{ steps.a.output.n }}"), &ctx).unwrap(),
            json!(42)
        );
        assert_eq!(
            render(&json!("  {{ steps.a.output }} "), &ctx).unwrap()["n"],
            json!(42)
        );
        assert_eq!(
            render(&json!("{{ trigger.lead.tags }}"), &ctx).unwrap(),
            json!(["vip", "new"])
        );
        assert_eq!(
            render(&json!("{{ steps.a.output.score > 1 }}"), &ctx).unwrap(),
            json!(true)
        );
        assert_eq!(
            render(&json!("{{ steps.zz.output }}"), &ctx).unwrap(),
            json!(null)
        );
    }

    #[test]
    fn mixed_text_renders_to_string() {
        let ctx = context();
        assert_eq!(
            render(
                &json!(
                    "Hi {{ trigger.lead.name }}, n={{ steps.a.output.n }} {{ previous_output }}"
                ),
                &ctx
            )
            .unwrap(),
            json!("Hi Ada, n=42 {\"x\":1}")
        );
        assert_eq!(render(&json!("{{ 1 }}{{ 2 }}"), &ctx).unwrap(), json!("12"));
        assert_eq!(
            render(&json!("no templates"), &ctx).unwrap(),
            json!("no templates")
        );
    }

    #[test]
    fn render_recurses_into_json_and_keeps_keys() {
        let out = render(
            &json!({"{{ x }}": ["{{ variables.region }}", 3, {"id": "{{ execution.id }}"}]}),
            &context(),
        )
        .unwrap();
        assert_eq!(out, json!({"{{ x }}": ["eu", 3, {"id": "exec-1"}]}));
    }

    #[test]
    fn missing_fields_are_null_safe() {
        assert_eq!(eval("steps.a.output.missing").unwrap(), json!(null));
        assert_eq!(eval("steps.nope.output.score.deeper").unwrap(), json!(null));
        assert_eq!(eval("steps.a.output.none.field").unwrap(), json!(null));
        assert_eq!(eval("steps.a.output.none['x'][0]").unwrap(), json!(null));
        assert_eq!(eval("steps.a.output.missing >= 70").unwrap(), json!(false));
        assert_eq!(eval("steps.a.output.missing < 70").unwrap(), json!(false));
        assert_eq!(eval("steps.a.output.missing == none").unwrap(), json!(true));
        assert_eq!(eval("steps.a.output.missing == null").unwrap(), json!(true));
        assert_eq!(eval("steps.a.output.missing | length").unwrap(), json!(0));
        assert_eq!(eval("'x' in steps.a.output.missing").unwrap(), json!(false));
        assert_eq!(eval("not steps.a.output.missing").unwrap(), json!(true));
    }

    #[test]
    fn comparisons_do_not_coerce() {
        assert_eq!(eval("'5' == 5").unwrap(), json!(false));
        assert_eq!(eval("'5' != 5").unwrap(), json!(true));
        assert_eq!(eval("1 == 1.0").unwrap(), json!(true));
        assert_eq!(eval("steps.a.output.score >= 70").unwrap(), json!(true));
        assert_eq!(
            eval("steps.a.output.score >= 70 and variables.region == 'eu'").unwrap(),
            json!(true)
        );
        assert_eq!(eval("'abc' < 'abd'").unwrap(), json!(true));
        assert_eq!(eval("1 < 2 < 3").unwrap(), json!(true));
        assert_eq!(eval("3 < 2 < 5").unwrap(), json!(false));
    }

    #[test]
    fn ordering_string_with_number_is_an_error() {
        let err = eval("steps.a.output.text > 5").unwrap_err();
        assert!(
            matches!(&err, TemplateError::Evaluation(m) if m.contains("cannot compare string with number using `>`")),
            "{err}"
        );
        assert!(eval("true < 1").is_err());
        assert!(eval("'5' < 6 < 7").is_err());
    }

    #[test]
    fn membership_length_boolean_logic_and_arithmetic() {
        assert_eq!(eval("'vip' in trigger.lead.tags").unwrap(), json!(true));
        assert_eq!(eval("'old' not in trigger.lead.tags").unwrap(), json!(true));
        assert_eq!(eval("'ell' in steps.a.output.text").unwrap(), json!(true));
        assert_eq!(eval("'n' in steps.a.output").unwrap(), json!(true));
        assert_eq!(eval("'q' in steps.a.output").unwrap(), json!(false));
        assert!(eval("1 in 5").is_err());
        assert_eq!(eval("trigger.lead.tags | length").unwrap(), json!(2));
        assert_eq!(eval("trigger.lead.name | length > 2").unwrap(), json!(true));
        assert_eq!(eval("not (1 > 2) or false").unwrap(), json!(true));
        assert_eq!(eval("steps.a.output.n * 2 + 1").unwrap(), json!(85));
        assert_eq!(eval("steps.a.output.n / 4").unwrap(), json!(10.5));
        assert_eq!(eval("'ab' * 2").unwrap(), json!("abab"));
        assert_eq!(eval("{'k': [1, 2]}").unwrap(), json!({"k": [1, 2]}));
        assert_eq!(
            eval("'yes' if steps.a.output.n > 40 else 'no'").unwrap(),
            json!("yes")
        );
        assert_eq!(eval("steps['a'].output.n").unwrap(), json!(42));
        assert_eq!(eval("-1.5").unwrap(), json!(-1.5));
    }

    #[test]
    fn work_is_bounded() {
        assert!(eval("'a' * 1000000000").is_err());
        // minijinja refuses ranges over 100 000 items; the fuel stops long pipelines.
        assert!(eval("range(100001) | join(',')").is_err());
        assert!(eval("range(10) | join(',')").is_ok());
        let long = format!("{{{{ {} }}}}", "1 + ".repeat(3000) + "1");
        assert!(matches!(
            render(&json!(long), &context()),
            Err(TemplateError::TooLong(_))
        ));
    }

    #[test]
    fn truthiness() {
        for v in [
            json!(null),
            json!(false),
            json!(0),
            json!(0.0),
            json!(""),
            json!([]),
            json!({}),
        ] {
            assert!(!is_truthy(&v), "{v}");
        }
        for v in [
            json!(true),
            json!(1),
            json!(-0.5),
            json!("x"),
            json!([0]),
            json!({"a": null}),
        ] {
            assert!(is_truthy(&v), "{v}");
        }
    }

    #[test]
    fn template_syntax_checks() {
        assert!(check_template_syntax("Hello {{ trigger.name }}!").is_ok());
        assert!(check_template_syntax("{{ {'a': {'b': '}}'}} }}").is_ok());
        assert!(check_template_syntax("text }} stray").is_ok());
        assert!(check_template_syntax("{{ trigger.name").is_err());
        assert!(check_template_syntax("{{ 1 + }}").is_err());
        assert!(check_template_syntax("{{ }}").is_err());
        assert!(check_template_syntax("{% for x in y %}{% endfor %}").is_err());
        assert!(check_template_syntax("{# comment #}").is_err());
        assert!(check_template_syntax("{{ '{%' }}").is_ok());
        assert!(check_expression_syntax("a >= 70 and b").is_ok());
        assert!(check_expression_syntax("a >=").is_err());
    }

    #[test]
    fn step_references_are_found() {
        assert_eq!(
            step_references(
                "{{ steps.a.output }} and {{ steps['b'].status }} {{ steps.a.x }} {{ foo.steps.c }}"
            ),
            vec!["a".to_string(), "b".to_string()]
        );
        assert_eq!(
            expression_step_references(
                "steps.score.output.n > 1 and (steps.x.output | length) > 0"
            ),
            vec!["score".to_string(), "x".to_string()]
        );
        assert!(step_references("no refs {{ trigger.steps }}").is_empty());
    }

    fn arbitrary_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(json!(null)),
            any::<bool>().prop_map(|b| json!(b)),
            any::<i64>().prop_map(|n| json!(n)),
            "[a-z{} ]{0,12}".prop_map(|s| json!(s)),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                prop::collection::btree_map("[a-z]{1,3}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn random_strings_never_panic(s in "\\PC{0,60}", t in "[a-z0-9 .\\[\\]{}()'\"|<>=!+*/%~-]{0,40}") {
            let ctx = context();
            let _ = evaluate(&s, &ctx);
            let _ = evaluate(&t, &ctx);
            let _ = render(&json!(s), &ctx);
            let _ = render(&json!(format!("{{{{ {t} }}}}")), &ctx);
            let _ = check_template_syntax(&t);
            let _ = step_references(&t);
        }

        #[test]
        fn random_json_never_panics(template in arbitrary_json(), ctx in arbitrary_json(), e in "[a-z.]{1,10} (==|<|>=|in) [a-z0-9.]{1,6}") {
            let _ = render(&template, &ctx);
            let _ = evaluate(&e, &ctx);
        }

        #[test]
        fn numbers_survive_templates(n in any::<i64>()) {
            let ctx = json!({"steps": {"a": {"output": {"n": n}}}});
            prop_assert_eq!(render(&json!("{{ steps.a.output.n }}"), &ctx).unwrap(), json!(n));
        }
    }
}
