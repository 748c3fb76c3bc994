//! `docs/troubleshooting.md` lists every error message an operator can meet, and only those.
//!
//! The messages are taken from the source, not from running the code: the test parses
//! `agent/src` and `catalog-schema/src` with `syn` and collects the message templates of
//!
//! - every `#[error("…")]` of a `thiserror` type (catalogue, SSH and transfer, tape, data
//!   directory, journal, task and command-line errors; `transparent` ones forward another
//!   error's message and need no entry of their own);
//! - every site-map diagnostic: the message argument of `Ctx::error`, `error_hint`, `warn`
//!   and `push` and of the JSON parser's `error` in `agent/src/config/`, and the `message`
//!   of every `Diagnostic { … }` literal;
//! - every command-line message: the message of `coded(code, …)` and of anyhow's
//!   `context`/`with_context`.
//!
//! A message argument is read through string literals, `format!`, `.into()`/`.to_string()`,
//! `match`/`if` arms, a `let` binding in the same function and a function of the same file
//! that builds the message; one that only passes on another value's text (`e.to_string()`,
//! `e.reason`) is skipped, since that value's type has its own templates.
//!
//! A template is written in the page as the message with every `{…}` placeholder shown as
//! `…`, as the heading of its entry: ``#### `unknown site …` ``. Templates made only of
//! placeholders and punctuation (`{0}`, `{copy}: {path}: {source}`) wrap another message and
//! need no entry.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use syn::punctuated::Punctuated;
use syn::visit::Visit;
use syn::{Expr, Lit, Stmt, Token};

const PAGE: &str = "docs/troubleshooting.md";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A template as the page writes it: placeholders as `…`, `{{`/`}}` as braces, runs of
/// white space as one space.
fn shown(template: &str) -> String {
    let mut out = String::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                for c in chars.by_ref() {
                    if c == '}' {
                        break;
                    }
                }
                out.push('…');
            }
            c => out.push(c),
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether a template says something of its own (has a word outside its placeholders).
fn says_something(shown: &str) -> bool {
    shown.chars().filter(|c| c.is_alphabetic()).count() >= 2
}

/// Messages found in one file: shown template -> the places that produce it.
type Found = BTreeMap<String, BTreeSet<String>>;

struct Scan<'a> {
    file: String,
    config: bool,
    /// Functions of this file by name, for messages built by a helper.
    fns: HashMap<String, &'a syn::Block>,
    /// `let` bindings of the function being visited.
    lets: HashMap<String, &'a Expr>,
    /// The item being visited, for the failure output.
    item: String,
    found: &'a mut Found,
}

impl<'a> Scan<'a> {
    fn add(&mut self, template: &str, what: &str) {
        let s = shown(template);
        if says_something(&s) {
            self.found
                .entry(s)
                .or_default()
                .insert(format!("{} ({what} in {})", self.file, self.item));
        }
    }

    /// The templates an expression can produce, or `None` when it only passes on text
    /// made elsewhere.
    fn resolve(&self, e: &'a Expr, depth: u8) -> Option<Vec<String>> {
        if depth > 8 {
            return None;
        }
        let d = depth + 1;
        let union = |exprs: Vec<&'a Expr>| {
            let all: Vec<String> = exprs
                .into_iter()
                .filter_map(|e| self.resolve(e, d))
                .flatten()
                .collect();
            (!all.is_empty()).then_some(all)
        };
        match e {
            Expr::Lit(l) => match &l.lit {
                Lit::Str(s) => Some(vec![s.value()]),
                _ => None,
            },
            Expr::Macro(m) if m.mac.path.is_ident("format") => {
                let args = m
                    .mac
                    .parse_body_with(Punctuated::<Expr, Token![,]>::parse_terminated)
                    .ok()?;
                match args.first()? {
                    Expr::Lit(l) => match &l.lit {
                        Lit::Str(s) => Some(vec![s.value()]),
                        _ => None,
                    },
                    _ => None,
                }
            }
            Expr::Reference(r) => self.resolve(&r.expr, d),
            Expr::Paren(p) => self.resolve(&p.expr, d),
            Expr::Group(g) => self.resolve(&g.expr, d),
            Expr::Closure(c) => self.resolve(&c.body, d),
            Expr::Block(b) => self.block(&b.block, d),
            Expr::Match(m) => union(m.arms.iter().map(|a| &*a.body).collect()),
            Expr::If(i) => {
                let mut branches = vec![];
                if let Some(Stmt::Expr(e, None)) = i.then_branch.stmts.last() {
                    branches.push(e);
                }
                if let Some((_, els)) = &i.else_branch {
                    branches.push(&**els);
                }
                union(branches)
            }
            Expr::MethodCall(m) => {
                if ["into", "to_string", "to_owned"].contains(&m.method.to_string().as_str()) {
                    self.resolve(&m.receiver, d)
                } else {
                    // A wrapper such as `scrub(&format!(…))`.
                    m.args.iter().find_map(|a| self.resolve(a, d))
                }
            }
            Expr::Path(p) => {
                let name = p.path.get_ident()?.to_string();
                self.resolve(self.lets.get(&name)?, d)
            }
            Expr::Call(c) => match &*c.func {
                Expr::Path(p) => {
                    let name = p.path.segments.last()?.ident.to_string();
                    self.block(self.fns.get(&name)?, d)
                }
                _ => None,
            },
            _ => None,
        }
    }

    fn block(&self, b: &'a syn::Block, d: u8) -> Option<Vec<String>> {
        match b.stmts.last()? {
            Stmt::Expr(e, None) => self.resolve(e, d),
            _ => None,
        }
    }

    fn message(&mut self, e: &'a Expr, what: &str) {
        for t in self.resolve(e, 0).unwrap_or_default() {
            self.add(&t, what);
        }
    }

    fn error_attrs(&mut self, attrs: &[syn::Attribute]) {
        for attr in attrs.iter().filter(|a| a.path().is_ident("error")) {
            // `#[error("template", args…)]`; `#[error(transparent)]` has no template.
            let template = attr
                .parse_args_with(|input: syn::parse::ParseStream<'_>| {
                    let template = input.parse::<syn::LitStr>().ok();
                    while !input.is_empty() {
                        input.step(|c| Ok(((), c.token_tree().map_or(*c, |(_, next)| next))))?;
                    }
                    Ok(template)
                })
                .unwrap_or_else(|e| panic!("{}: {}: {e}", self.file, self.item));
            if let Some(t) = template {
                self.add(&t.value(), "#[error]");
            }
        }
    }
}

impl<'a> Visit<'a> for Scan<'a> {
    fn visit_item_enum(&mut self, e: &'a syn::ItemEnum) {
        for v in &e.variants {
            self.item = format!("{}::{}", e.ident, v.ident);
            self.error_attrs(&v.attrs);
        }
    }

    fn visit_item_struct(&mut self, s: &'a syn::ItemStruct) {
        self.item = s.ident.to_string();
        self.error_attrs(&s.attrs);
    }

    fn visit_item_fn(&mut self, f: &'a syn::ItemFn) {
        self.item = format!("fn {}", f.sig.ident);
        self.lets = lets(&f.block);
        syn::visit::visit_item_fn(self, f);
    }

    fn visit_impl_item_fn(&mut self, f: &'a syn::ImplItemFn) {
        self.item = format!("fn {}", f.sig.ident);
        self.lets = lets(&f.block);
        syn::visit::visit_impl_item_fn(self, f);
    }

    fn visit_expr_method_call(&mut self, m: &'a syn::ExprMethodCall) {
        if self.config {
            // Ctx::error/warn(pos, path, message), error_hint(pos, path, message, hint),
            // push(severity, pos, path, message, hint); the JSON parser's error(message).
            let message = match (m.method.to_string().as_str(), m.args.len()) {
                ("error" | "warn", 3) | ("error_hint", 4) => m.args.get(2),
                ("push", 5) => m.args.get(3),
                ("error", 1) => m.args.first(),
                _ => None,
            };
            if let Some(e) = message {
                self.message(e, "site-map diagnostic");
            }
        }
        if ["context", "with_context"].contains(&m.method.to_string().as_str()) && m.args.len() == 1
        {
            self.message(&m.args[0], "context");
        }
        syn::visit::visit_expr_method_call(self, m);
    }

    fn visit_expr_call(&mut self, c: &'a syn::ExprCall) {
        if let Expr::Path(p) = &*c.func {
            if p.path.is_ident("coded") && c.args.len() == 2 {
                self.message(&c.args[1], "coded");
            }
        }
        syn::visit::visit_expr_call(self, c);
    }

    fn visit_expr_struct(&mut self, s: &'a syn::ExprStruct) {
        if s.path
            .segments
            .last()
            .is_some_and(|l| l.ident == "Diagnostic")
        {
            for f in &s.fields {
                if matches!(&f.member, syn::Member::Named(n) if n == "message") {
                    self.message(&f.expr, "site-map diagnostic");
                }
            }
        }
        syn::visit::visit_expr_struct(self, s);
    }

    // Unit tests build messages of their own.
    fn visit_item_mod(&mut self, m: &'a syn::ItemMod) {
        if m.ident != "tests" {
            syn::visit::visit_item_mod(self, m);
        }
    }
}

/// The `let NAME = …;` bindings anywhere in a function body.
fn lets(body: &syn::Block) -> HashMap<String, &Expr> {
    struct Lets<'a>(HashMap<String, &'a Expr>);
    impl<'a> Visit<'a> for Lets<'a> {
        fn visit_local(&mut self, l: &'a syn::Local) {
            if let (syn::Pat::Ident(p), Some(init)) = (&l.pat, &l.init) {
                self.0.insert(p.ident.to_string(), &init.expr);
            }
            syn::visit::visit_local(self, l);
        }
    }
    let mut v = Lets(HashMap::new());
    v.visit_block(body);
    v.0
}

/// Every message the code can produce, as the page shows it, with where it comes from.
fn messages_in_code() -> Found {
    let mut files = vec![];
    rust_files(&repo().join("agent/src"), &mut files);
    rust_files(&repo().join("catalog-schema/src"), &mut files);
    files.sort();
    let mut found = Found::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let rel = path
            .strip_prefix(repo())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let mut fns = HashMap::new();
        for item in &ast.items {
            collect_fns(item, &mut fns);
        }
        let mut scan = Scan {
            config: rel.starts_with("agent/src/config/"),
            file: rel,
            fns,
            lets: HashMap::new(),
            item: String::new(),
            found: &mut found,
        };
        scan.visit_file(&ast);
    }
    found
}

fn collect_fns<'a>(item: &'a syn::Item, fns: &mut HashMap<String, &'a syn::Block>) {
    match item {
        syn::Item::Fn(f) => {
            fns.insert(f.sig.ident.to_string(), &f.block);
        }
        syn::Item::Impl(i) => {
            for it in &i.items {
                if let syn::ImplItem::Fn(f) = it {
                    fns.insert(f.sig.ident.to_string(), &f.block);
                }
            }
        }
        syn::Item::Mod(m) if m.ident != "tests" => {
            for it in m.content.iter().flat_map(|(_, items)| items) {
                collect_fns(it, fns);
            }
        }
        _ => {}
    }
}

/// `text` as a markdown code span: fenced with more backticks than it holds, padded with a
/// space when it starts or ends with one.
fn code_span(text: &str) -> String {
    if !text.contains('`') {
        return format!("`{text}`");
    }
    let fence = if text.contains("``") { "```" } else { "``" };
    format!("{fence} {text} {fence}")
}

/// The entries of the page: each `#### ` heading is one message in a code span (and a heading
/// of another level that is a code span is taken as an entry too, not silently skipped).
fn entries_in_page() -> BTreeMap<String, usize> {
    let text = std::fs::read_to_string(repo().join(PAGE)).unwrap();
    let mut entries = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let level = line.chars().take_while(|c| *c == '#').count();
        let heading = line[level..].trim();
        if level == 0 || !(level == 4 || heading.starts_with('`')) {
            continue;
        }
        let ticks = heading.chars().take_while(|c| *c == '`').count();
        let fence = "`".repeat(ticks);
        let inner = (ticks > 0)
            .then(|| heading[ticks..].strip_suffix(fence.as_str()))
            .flatten()
            .unwrap_or_else(|| {
                panic!(
                    "{PAGE}:{}: an entry's heading is the message in a code span: {line}",
                    n + 1
                )
            });
        // A code span that starts or ends with a backtick is padded with one space.
        let inner = if ticks > 1 { inner.trim() } else { inner };
        let prev = entries.insert(
            inner.split_whitespace().collect::<Vec<_>>().join(" "),
            n + 1,
        );
        assert!(prev.is_none(), "{PAGE}:{}: listed twice: {inner}", n + 1);
    }
    entries
}

#[test]
fn every_error_message_the_code_can_produce_is_in_the_troubleshooting_page() {
    let found = messages_in_code();
    assert!(
        found.len() > 150,
        "the scan found only {} messages; is it still reading the sources?",
        found.len()
    );
    let page = entries_in_page();
    let missing: Vec<String> = found
        .iter()
        .filter(|(m, _)| !page.contains_key(*m))
        .map(|(m, from)| {
            let from: Vec<&str> = from.iter().map(String::as_str).collect();
            format!(
                "#### {}\n    from {}",
                code_span(m),
                from.join("\n    and  ")
            )
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{} message(s) the code can produce have no entry in {PAGE}; add one for each \
         (what it means, what to do), in the section it belongs to:\n\n{}\n",
        missing.len(),
        missing.join("\n")
    );
}

#[test]
fn every_message_in_the_troubleshooting_page_is_one_the_code_can_still_produce() {
    let found = messages_in_code();
    let stale: Vec<String> = entries_in_page()
        .into_iter()
        .filter(|(m, _)| !found.contains_key(m))
        .map(|(m, line)| format!("{PAGE}:{line}: `{m}`"))
        .collect();
    assert!(
        stale.is_empty(),
        "{} entr(ies) in {PAGE} name a message no code produces any more (reworded or \
         removed); update or delete them:\n{}\n",
        stale.len(),
        stale.join("\n")
    );
}
