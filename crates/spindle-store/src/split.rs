//! Splits a migration file into single statements.
//!
//! Spin's `execute` runs only the first statement of a string and still
//! answers Ok, so a migration sent whole would silently apply one statement.
//! The splitter knows quotes and comments, which is all our migrations use;
//! trigger bodies (`BEGIN … END` with inner `;`) are refused rather than cut.

use thiserror::Error;

/// A migration text the splitter will not cut.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SplitError {
    /// A quote or block comment is never closed.
    #[error("unterminated {0} in SQL")]
    Unterminated(&'static str),
    /// `CREATE TRIGGER` bodies hold `;` that do not end the statement.
    #[error("CREATE TRIGGER is not supported in migrations")]
    Trigger,
}

/// The statements of `sql`, trimmed, without empty or comment-only ones.
pub fn split_statements(sql: &str) -> Result<Vec<String>, SplitError> {
    let mut statements = Vec::new();
    let mut current = String::new();
    let mut has_code = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' | '`' => {
                current.push(c);
                has_code = true;
                loop {
                    let Some(inner) = chars.next() else {
                        return Err(SplitError::Unterminated("quote"));
                    };
                    current.push(inner);
                    // A doubled quote is an escaped quote inside the literal.
                    if inner == c && chars.peek() != Some(&c) {
                        break;
                    }
                    if inner == c {
                        current.push(chars.next().unwrap_or(c));
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                for inner in chars.by_ref() {
                    if inner == '\n' {
                        current.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut previous = ' ';
                loop {
                    let Some(inner) = chars.next() else {
                        return Err(SplitError::Unterminated("block comment"));
                    };
                    if previous == '*' && inner == '/' {
                        break;
                    }
                    previous = inner;
                }
                current.push(' ');
            }
            ';' => {
                push_statement(&mut statements, &current, has_code)?;
                current.clear();
                has_code = false;
            }
            _ => {
                if !c.is_whitespace() {
                    has_code = true;
                }
                current.push(c);
            }
        }
    }
    push_statement(&mut statements, &current, has_code)?;
    Ok(statements)
}

fn push_statement(
    statements: &mut Vec<String>,
    text: &str,
    has_code: bool,
) -> Result<(), SplitError> {
    if !has_code {
        return Ok(());
    }
    let statement = text.trim();
    let words: Vec<String> = statement
        .split_whitespace()
        .take(4)
        .map(str::to_ascii_uppercase)
        .collect();
    if words.first().map(String::as_str) == Some("CREATE") && words.iter().any(|w| w == "TRIGGER") {
        return Err(SplitError::Trigger);
    }
    statements.push(statement.to_string());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_semicolons_and_drops_comments() {
        let sql = "-- header; with a semicolon\nCREATE TABLE a (x INTEGER);\n/* block; */\nCREATE INDEX i ON a (x);\n-- trailing\n";
        assert_eq!(
            split_statements(sql).unwrap(),
            vec!["CREATE TABLE a (x INTEGER)", "CREATE INDEX i ON a (x)"]
        );
    }

    #[test]
    fn semicolons_inside_quotes_do_not_split() {
        let sql = "INSERT INTO a VALUES ('x;y', 'it''s; fine');SELECT \"odd;name\" FROM a";
        assert_eq!(
            split_statements(sql).unwrap(),
            vec![
                "INSERT INTO a VALUES ('x;y', 'it''s; fine')",
                "SELECT \"odd;name\" FROM a"
            ]
        );
    }

    #[test]
    fn last_statement_needs_no_semicolon() {
        assert_eq!(split_statements("SELECT 1").unwrap(), vec!["SELECT 1"]);
    }

    #[test]
    fn comment_only_text_has_no_statements() {
        assert!(
            split_statements("-- nothing\n /* here */ ;;")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn unterminated_quote_is_refused() {
        assert_eq!(
            split_statements("SELECT 'oops"),
            Err(SplitError::Unterminated("quote"))
        );
    }

    #[test]
    fn triggers_are_refused_rather_than_cut() {
        let sql = "CREATE TRIGGER t AFTER INSERT ON a BEGIN UPDATE b SET n = n + 1; END;";
        assert_eq!(split_statements(sql), Err(SplitError::Trigger));
    }
}
