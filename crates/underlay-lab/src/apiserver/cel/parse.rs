//! The CEL subset's syntax: tokens, then a recursive-descent parser with
//! CEL's precedence (`||` < `&&` < comparisons < unary < member access).
//! Macros and functions are resolved here, so an unknown one is a parse
//! error, as kube-apiserver's compiler reports it when the CRD is written.

use serde_json::Value;

/// Deeper nesting than this is refused (kube-apiserver limits it too), so
/// no rule can exhaust the stack.
const MAX_DEPTH: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Cmp {
    pub fn symbol(self) -> &'static str {
        match self {
            Cmp::Eq => "_==_",
            Cmp::Ne => "_!=_",
            Cmp::Lt => "_<_",
            Cmp::Le => "_<=_",
            Cmp::Gt => "_>_",
            Cmp::Ge => "_>=_",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Ident(String),
    Lit(Value),
    Select(Box<Expr>, String),
    Has(Box<Expr>, String),
    Index(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Compare(Cmp, Box<Expr>, Box<Expr>),
    Size(Box<Expr>),
    IsCidr(Box<Expr>),
    /// `target.exists(var, body)` or, with `all`, `target.all(var, body)`.
    Quantifier {
        target: Box<Expr>,
        var: String,
        body: Box<Expr>,
        all: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Int(i64),
    Str(String),
    Punct(&'static str),
}

const PUNCTS: &[&str] = &[
    "&&", "||", "==", "!=", "<=", ">=", "<", ">", "!", "-", "(", ")", "[", "]", ".", ",",
];

fn tokens(src: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(c) = rest.chars().next() {
        if c.is_whitespace() {
            rest = &rest[c.len_utf8()..];
        } else if c.is_ascii_alphabetic() || c == '_' {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            out.push(Token::Ident(rest[..end].to_string()));
            rest = &rest[end..];
        } else if c.is_ascii_digit() {
            let end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            let n = rest[..end]
                .parse()
                .map_err(|_| format!("integer {} out of range", &rest[..end]))?;
            out.push(Token::Int(n));
            rest = &rest[end..];
        } else if c == '\'' || c == '"' {
            let (s, after) = string(&rest[1..], c)?;
            out.push(Token::Str(s));
            rest = after;
        } else if let Some(p) = PUNCTS.iter().find(|p| rest.starts_with(**p)) {
            out.push(Token::Punct(p));
            rest = &rest[p.len()..];
        } else {
            return Err(format!("unexpected character '{c}'"));
        }
    }
    Ok(out)
}

/// A quoted string's text (after its opening quote) and what follows it.
fn string(src: &str, quote: char) -> Result<(String, &str), String> {
    let mut out = String::new();
    let mut chars = src.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            c if c == quote => return Ok((out, &src[i + 1..])),
            '\\' => match chars.next().map(|(_, e)| e) {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(e @ ('\\' | '\'' | '"')) => out.push(e),
                _ => return Err("unsupported escape in a string".into()),
            },
            c => out.push(c),
        }
    }
    Err("unterminated string".into())
}

pub fn parse(src: &str) -> Result<Expr, String> {
    let mut p = Parser {
        tokens: tokens(src)?,
        at: 0,
        depth: 0,
    };
    let e = p.or()?;
    match p.peek() {
        None => Ok(e),
        Some(t) => Err(format!("unexpected {t:?} after the expression")),
    }
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Result<Token, String> {
        let t = self
            .tokens
            .get(self.at)
            .cloned()
            .ok_or_else(|| "unexpected end of the rule".to_string())?;
        self.at += 1;
        Ok(t)
    }

    fn eat(&mut self, punct: &str) -> bool {
        let hit = matches!(self.peek(), Some(Token::Punct(p)) if *p == punct);
        if hit {
            self.at += 1;
        }
        hit
    }

    fn expect(&mut self, punct: &str) -> Result<(), String> {
        match self.next()? {
            Token::Punct(p) if p == punct => Ok(()),
            t => Err(format!("expected '{punct}', found {t:?}")),
        }
    }

    fn deeper(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err("the rule is nested too deeply".into());
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Expr, String> {
        self.deeper()?;
        let mut e = self.and()?;
        while self.eat("||") {
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        self.depth -= 1;
        Ok(e)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut e = self.relation()?;
        while self.eat("&&") {
            e = Expr::And(Box::new(e), Box::new(self.relation()?));
        }
        Ok(e)
    }

    fn relation(&mut self) -> Result<Expr, String> {
        let left = self.unary()?;
        let op = match self.peek() {
            Some(Token::Punct("==")) => Cmp::Eq,
            Some(Token::Punct("!=")) => Cmp::Ne,
            Some(Token::Punct("<")) => Cmp::Lt,
            Some(Token::Punct("<=")) => Cmp::Le,
            Some(Token::Punct(">")) => Cmp::Gt,
            Some(Token::Punct(">=")) => Cmp::Ge,
            _ => return Ok(left),
        };
        self.at += 1;
        Ok(Expr::Compare(op, Box::new(left), Box::new(self.unary()?)))
    }

    fn unary(&mut self) -> Result<Expr, String> {
        self.deeper()?;
        let e = if self.eat("!") {
            Expr::Not(Box::new(self.unary()?))
        } else if self.eat("-") {
            Expr::Neg(Box::new(self.unary()?))
        } else {
            self.member()?
        };
        self.depth -= 1;
        Ok(e)
    }

    fn member(&mut self) -> Result<Expr, String> {
        let mut e = self.primary()?;
        loop {
            if self.eat(".") {
                let Token::Ident(name) = self.next()? else {
                    return Err("expected a field name after '.'".into());
                };
                e = if self.eat("(") {
                    self.method(e, &name)?
                } else {
                    Expr::Select(Box::new(e), name)
                };
            } else if self.eat("[") {
                let key = self.or()?;
                self.expect("]")?;
                e = Expr::Index(Box::new(e), Box::new(key));
            } else {
                return Ok(e);
            }
        }
    }

    /// `receiver.name(` was read: the macro or function it calls.
    fn method(&mut self, receiver: Expr, name: &str) -> Result<Expr, String> {
        let target = Box::new(receiver);
        match name {
            "exists" | "all" => {
                let var = match self.next()? {
                    Token::Ident(v) => v,
                    t => return Err(format!("{name}() takes a variable name first, not {t:?}")),
                };
                self.expect(",")?;
                let body = Box::new(self.or()?);
                self.expect(")")?;
                let all = name == "all";
                Ok(Expr::Quantifier {
                    target,
                    var,
                    body,
                    all,
                })
            }
            "size" => {
                self.expect(")")?;
                Ok(Expr::Size(target))
            }
            other => Err(format!("unknown function '{other}'")),
        }
    }

    fn primary(&mut self) -> Result<Expr, String> {
        match self.next()? {
            Token::Int(n) => Ok(Expr::Lit(Value::from(n))),
            Token::Str(s) => Ok(Expr::Lit(Value::String(s))),
            Token::Punct("(") => {
                let e = self.or()?;
                self.expect(")")?;
                Ok(e)
            }
            Token::Ident(name) if self.eat("(") => self.function(&name),
            Token::Ident(name) => Ok(match name.as_str() {
                "true" => Expr::Lit(Value::Bool(true)),
                "false" => Expr::Lit(Value::Bool(false)),
                "null" => Expr::Lit(Value::Null),
                _ => Expr::Ident(name),
            }),
            t => Err(format!("unexpected {t:?}")),
        }
    }

    /// `name(` was read: the global function or macro it calls.
    fn function(&mut self, name: &str) -> Result<Expr, String> {
        let arg = self.or()?;
        self.expect(")")?;
        match (name, arg) {
            ("has", Expr::Select(inner, field)) => Ok(Expr::Has(inner, field)),
            ("has", _) => Err("has() takes a field selection, such as has(self.field)".into()),
            ("size", arg) => Ok(Expr::Size(Box::new(arg))),
            ("isCIDR", arg) => Ok(Expr::IsCidr(Box::new(arg))),
            (other, _) => Err(format!("unknown function '{other}'")),
        }
    }
}
