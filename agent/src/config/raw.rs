//! A small JSON reader that keeps what `serde_json::Value` loses: the line:column of every
//! value and key, and every member of an object in order, duplicates included.
//!
//! [`parse`] turns text into a [`Node`] tree or one [`SyntaxError`] (JSON cannot be
//! resynchronised reliably after a syntax error, so the first one is reported, with its
//! position). Columns count characters, so positions stay right in files with non-ASCII
//! text. The grammar is RFC 8259, strictly: no comments, no trailing commas, no NaN.

use super::diag::LineCol;

/// Nesting deeper than this is refused (a site map is a few levels deep).
const MAX_DEPTH: usize = 64;

/// A JSON value with the position of its first character.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Where the value starts.
    pub pos: LineCol,
    /// The value.
    pub value: Value,
}

/// A JSON value. Objects keep every member in order, duplicate keys included.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// A number, kept as written.
    Number(Number),
    /// A string, unescaped.
    String(String),
    /// An array.
    Array(Vec<Node>),
    /// An object.
    Object(Vec<Member>),
}

/// A JSON number as written in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Number(pub String);

impl Number {
    /// The number as an integer, if it is one (no fraction, no exponent, in range).
    pub fn as_i64(&self) -> Option<i64> {
        self.0.parse().ok()
    }
}

/// One `"key": value` member of an object.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// The key, unescaped.
    pub key: String,
    /// Where the key's opening quote is.
    pub key_pos: LineCol,
    /// The value.
    pub value: Node,
}

impl Value {
    /// The JSON type name, for messages ("expected a string, found an array").
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Bool(_) => "a boolean",
            Self::Number(_) => "a number",
            Self::String(_) => "a string",
            Self::Array(_) => "an array",
            Self::Object(_) => "an object",
        }
    }
}

/// The first syntax error in a file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{pos}: {message}")]
pub struct SyntaxError {
    /// Where the parser stopped.
    pub pos: LineCol,
    /// What it expected and found.
    pub message: String,
}

/// Parses one JSON document (a leading UTF-8 byte-order mark is allowed).
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut p = Parser {
        chars: text.chars().collect(),
        i: 0,
        line: 1,
        col: 1,
    };
    p.skip_ws();
    if p.peek().is_none() {
        return Err(p.error("the file is empty; expected a JSON object or array"));
    }
    let node = p.value(0)?;
    p.skip_ws();
    if let Some(c) = p.peek() {
        return Err(p.error(format!(
            "unexpected {} after the end of the JSON document",
            describe(c)
        )));
    }
    Ok(node)
}

struct Parser {
    chars: Vec<char>,
    i: usize,
    line: u32,
    col: u32,
}

fn describe(c: char) -> String {
    match c {
        '\n' => "end of line".into(),
        c if c.is_control() => format!("control character U+{:04X}", c as u32),
        c => format!("`{c}`"),
    }
}

impl Parser {
    fn pos(&self) -> LineCol {
        LineCol {
            line: self.line,
            col: self.col,
        }
    }

    fn error(&self, message: impl Into<String>) -> SyntaxError {
        SyntaxError {
            pos: self.pos(),
            message: message.into(),
        }
    }

    fn eof(&self, what: &str) -> SyntaxError {
        self.error(format!(
            "unexpected end of file {what} (is the file truncated?)"
        ))
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.i).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.i += 1;
        if c == '\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t' | '\n' | '\r')) {
            self.bump();
        }
    }

    fn value(&mut self, depth: usize) -> Result<Node, SyntaxError> {
        if depth > MAX_DEPTH {
            return Err(self.error(format!("nesting deeper than {MAX_DEPTH} levels")));
        }
        let pos = self.pos();
        let value = match self.peek() {
            None => return Err(self.eof("where a value was expected")),
            Some('{') => self.object(depth)?,
            Some('[') => self.array(depth)?,
            Some('"') => Value::String(self.string()?),
            Some('t') => self.word("true", Value::Bool(true))?,
            Some('f') => self.word("false", Value::Bool(false))?,
            Some('n') => self.word("null", Value::Null)?,
            Some('-' | '0'..='9') => Value::Number(self.number()?),
            Some(c) => {
                return Err(self.error(format!("expected a value, found {}", describe(c))));
            }
        };
        Ok(Node { pos, value })
    }

    fn word(&mut self, word: &str, value: Value) -> Result<Value, SyntaxError> {
        let start = self.pos();
        for expected in word.chars() {
            match self.bump() {
                Some(c) if c == expected => {}
                None => return Err(self.eof(&format!("inside `{word}`"))),
                Some(_) => {
                    return Err(SyntaxError {
                        pos: start,
                        message: format!("invalid literal; expected `{word}`"),
                    })
                }
            }
        }
        Ok(value)
    }

    fn digits(&mut self) -> Result<String, SyntaxError> {
        let mut s = String::new();
        while let Some(c @ '0'..='9') = self.peek() {
            s.push(c);
            self.bump();
        }
        if s.is_empty() {
            return match self.peek() {
                None => Err(self.eof("inside a number")),
                Some(c) => Err(self.error(format!("expected a digit, found {}", describe(c)))),
            };
        }
        Ok(s)
    }

    fn number(&mut self) -> Result<Number, SyntaxError> {
        let mut s = String::new();
        if self.peek() == Some('-') {
            s.push('-');
            self.bump();
        }
        let int_pos = self.pos();
        let int = self.digits()?;
        if int.len() > 1 && int.starts_with('0') {
            return Err(SyntaxError {
                pos: int_pos,
                message: "numbers must not have leading zeros".into(),
            });
        }
        s.push_str(&int);
        if self.peek() == Some('.') {
            self.bump();
            s.push('.');
            s.push_str(&self.digits()?);
        }
        if let Some(e @ ('e' | 'E')) = self.peek() {
            self.bump();
            s.push(e);
            if let Some(sign @ ('+' | '-')) = self.peek() {
                self.bump();
                s.push(sign);
            }
            s.push_str(&self.digits()?);
        }
        Ok(Number(s))
    }

    fn hex4(&mut self) -> Result<u32, SyntaxError> {
        let mut v = 0;
        for _ in 0..4 {
            let Some(c) = self.bump() else {
                return Err(self.eof("inside a \\u escape"));
            };
            let Some(d) = c.to_digit(16) else {
                return Err(self.error(format!(
                    "invalid \\u escape: {} is not a hex digit",
                    describe(c)
                )));
            };
            v = v * 16 + d;
        }
        Ok(v)
    }

    /// The character of a `\uXXXX` escape (the `\u` already read), joining a UTF-16
    /// surrogate pair written as two escapes. `at` is where the escape starts.
    fn unicode_escape(&mut self, at: LineCol) -> Result<char, SyntaxError> {
        let unpaired = || SyntaxError {
            pos: at,
            message: "unpaired UTF-16 surrogate in \\u escape".into(),
        };
        let hi = self.hex4()?;
        let code = if (0xD800..0xDC00).contains(&hi) {
            if self.bump() != Some('\\') || self.bump() != Some('u') {
                return Err(unpaired());
            }
            let lo = self.hex4()?;
            if !(0xDC00..0xE000).contains(&lo) {
                return Err(unpaired());
            }
            0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
        } else {
            hi
        };
        char::from_u32(code).ok_or_else(unpaired)
    }

    fn string(&mut self) -> Result<String, SyntaxError> {
        let open = self.pos();
        self.bump(); // the opening quote
        let mut s = String::new();
        loop {
            let here = self.pos();
            let Some(c) = self.bump() else {
                return Err(SyntaxError {
                    pos: open,
                    message: "unterminated string (is the file truncated?)".into(),
                });
            };
            match c {
                '"' => return Ok(s),
                '\\' => {
                    let Some(e) = self.bump() else {
                        return Err(self.eof("inside a string escape"));
                    };
                    match e {
                        '"' => s.push('"'),
                        '\\' => s.push('\\'),
                        '/' => s.push('/'),
                        'b' => s.push('\u{8}'),
                        'f' => s.push('\u{c}'),
                        'n' => s.push('\n'),
                        'r' => s.push('\r'),
                        't' => s.push('\t'),
                        'u' => s.push(self.unicode_escape(here)?),
                        other => {
                            return Err(SyntaxError {
                                pos: here,
                                message: format!("invalid escape `\\{other}` in a string"),
                            })
                        }
                    }
                }
                c if (c as u32) < 0x20 => {
                    return Err(SyntaxError {
                        pos: here,
                        message: format!(
                            "{} inside a string (strings cannot span lines; use \\n)",
                            describe(c)
                        ),
                    })
                }
                c => s.push(c),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, SyntaxError> {
        self.bump(); // [
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(']') {
            self.bump();
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_ws();
            if self.peek() == Some(']') {
                return Err(self.error("trailing comma before `]`"));
            }
            items.push(self.value(depth + 1)?);
            self.skip_ws();
            match self.bump() {
                Some(',') => {}
                Some(']') => return Ok(Value::Array(items)),
                None => return Err(self.eof("inside an array; expected `,` or `]`")),
                Some(c) => {
                    return Err(SyntaxError {
                        pos: LineCol {
                            line: self.line,
                            col: self.col - 1,
                        },
                        message: format!("expected `,` or `]` in an array, found {}", describe(c)),
                    })
                }
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, SyntaxError> {
        self.bump(); // {
        let mut members = Vec::new();
        self.skip_ws();
        if self.peek() == Some('}') {
            self.bump();
            return Ok(Value::Object(members));
        }
        loop {
            self.skip_ws();
            let key_pos = self.pos();
            match self.peek() {
                Some('"') => {}
                Some('}') => return Err(self.error("trailing comma before `}`")),
                None => return Err(self.eof("inside an object; expected a key")),
                Some(c) => {
                    return Err(self.error(format!(
                        "expected a key in double quotes, found {}",
                        describe(c)
                    )))
                }
            }
            let key = self.string()?;
            self.skip_ws();
            match self.peek() {
                Some(':') => {
                    self.bump();
                }
                None => return Err(self.eof("after a key; expected `:`")),
                Some(c) => {
                    return Err(self.error(format!(
                        "expected `:` after key \"{key}\", found {}",
                        describe(c)
                    )))
                }
            }
            self.skip_ws();
            let value = self.value(depth + 1)?;
            members.push(Member {
                key,
                key_pos,
                value,
            });
            self.skip_ws();
            match self.peek() {
                Some(',') => {
                    self.bump();
                }
                Some('}') => {
                    self.bump();
                    return Ok(Value::Object(members));
                }
                None => return Err(self.eof("inside an object; expected `,` or `}`")),
                Some(c) => {
                    return Err(self.error(format!(
                        "expected `,` or `}}` in an object, found {} (missing comma?)",
                        describe(c)
                    )))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lc(line: u32, col: u32) -> LineCol {
        LineCol { line, col }
    }

    #[test]
    fn positions_count_characters_not_bytes() {
        let n = parse("{\"näme\": \"ü→\", \"x\": [1, -2.5e3]}").unwrap();
        let Value::Object(m) = n.value else { panic!() };
        assert_eq!(m[0].key, "näme");
        assert_eq!(m[1].key_pos, lc(1, 16));
        assert_eq!(m[1].value.pos, lc(1, 21));
        let Value::Array(a) = &m[1].value.value else {
            panic!()
        };
        assert_eq!(a[1].pos, lc(1, 25));
        assert_eq!(a[1].value, Value::Number(Number("-2.5e3".into())));
    }

    #[test]
    fn astral_characters_are_one_column() {
        let n = parse("{\"😀\": 1,\r\n \"b\": \"\u{1F600}\"}").unwrap();
        let Value::Object(m) = n.value else { panic!() };
        assert_eq!(m[0].value.pos, lc(1, 7));
        assert_eq!(m[1].key_pos, lc(2, 2));
        assert_eq!(m[1].value.value, Value::String("😀".into()));
    }

    #[test]
    fn duplicate_keys_kept_in_order() {
        let n = parse("{\"a\": 1,\n \"a\": 2}").unwrap();
        let Value::Object(m) = n.value else { panic!() };
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].key_pos, lc(2, 2));
    }

    #[test]
    fn escapes_and_surrogates() {
        let n = parse(r#""a\n\u00e9\ud83d\ude00\/""#).unwrap();
        assert_eq!(n.value, Value::String("a\né😀/".into()));
        assert!(parse(r#""\ud83d""#).is_err());
        assert!(parse(r#""\udc00""#).is_err(), "a lone low surrogate");
        assert!(
            parse(r#""\ud83d\u0041""#).is_err(),
            "a high surrogate with a non-low one"
        );
    }

    #[test]
    fn trailing_comma_reported_with_position() {
        let e = parse("{\n  \"a\": 1,\n}").unwrap_err();
        assert_eq!(e.pos, lc(3, 1));
        assert!(e.message.contains("trailing comma"), "{e}");
        let e = parse("[1,\n 2, ]").unwrap_err();
        assert_eq!(e.pos, lc(2, 5));
    }

    #[test]
    fn truncated_file_reported() {
        let e = parse("{\n \"a\": [1, 2").unwrap_err();
        assert!(e.message.contains("truncated"), "{e}");
        assert_eq!(e.pos, lc(2, 12));
        let e = parse("{\"a\": \"abc").unwrap_err();
        assert!(e.message.contains("unterminated string"), "{e}");
        assert_eq!(e.pos, lc(1, 7));
    }

    #[test]
    fn strict_grammar() {
        for bad in [
            "",
            "{} x",
            "[01]",
            "[1.]",
            "{'a': 1}",
            "[tru]",
            "{\"a\" 1}",
            "[NaN]",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse("\u{feff}[]").is_ok());
    }
}
