//! Argv templates: each token is rendered on its own, so a value with spaces or shell
//! metacharacters stays one argument.

use crate::config::{parse_tape_template, TemplatePiece, TAPE_PLACEHOLDERS};

/// A parsed argv template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    argv: Vec<String>,
    tokens: Vec<Vec<TemplatePiece>>,
}

/// The values a template may use; `None` where unknown for this operation.
#[derive(Debug, Clone, Default)]
pub struct Vars<'a> {
    /// `{file}`: the file to write (local or staged path).
    pub file: Option<&'a str>,
    /// `{path}`: path relative to the run directory.
    pub path: Option<&'a str>,
    /// `{key}`: `<run>/<path>`.
    pub key: Option<&'a str>,
    /// `{size}`.
    pub size: Option<u64>,
    /// `{md5}`.
    pub md5: Option<&'a str>,
    /// `{sha256}`.
    pub sha256: Option<&'a str>,
    /// `{run}`: run name.
    pub run: Option<&'a str>,
    /// `{number}`.
    pub number: Option<i64>,
    /// `{period}`.
    pub period: Option<&'a str>,
    /// `{detector}`.
    pub detector: Option<&'a str>,
    /// `{tape_path}`.
    pub tape_path: Option<&'a str>,
    /// `{dest}`: where `retrieve` writes.
    pub dest: Option<&'a str>,
}

impl Template {
    /// Parse every token (the site map was checked already; this repeats it for callers
    /// that build configurations in code).
    pub fn parse(argv: &[String]) -> Result<Self, String> {
        if argv.is_empty() {
            return Err("empty command".into());
        }
        let tokens = argv
            .iter()
            .map(|t| parse_tape_template(t, TAPE_PLACEHOLDERS))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            argv: argv.to_vec(),
            tokens,
        })
    }

    /// The template as written.
    pub fn as_argv(&self) -> &[String] {
        &self.argv
    }

    /// Whether any token uses this placeholder.
    pub fn uses(&self, name: &str) -> bool {
        self.tokens
            .iter()
            .flatten()
            .any(|p| matches!(p, TemplatePiece::Field(f, _) if *f == name))
    }

    /// The argv for these values; an error names a placeholder without a value.
    pub fn render(&self, vars: &Vars<'_>) -> Result<Vec<String>, String> {
        self.tokens
            .iter()
            .map(|pieces| {
                let mut out = String::new();
                for p in pieces {
                    match p {
                        TemplatePiece::Text(t) => out.push_str(t),
                        TemplatePiece::Field(name, width) => {
                            out.push_str(&value(vars, name, *width).ok_or_else(|| {
                                format!("{{{name}}} has no value here (template {:?})", self.argv)
                            })?)
                        }
                    }
                }
                Ok(out)
            })
            .collect()
    }
}

fn value(v: &Vars<'_>, name: &str, width: Option<usize>) -> Option<String> {
    let s = |x: Option<&str>| x.map(str::to_owned);
    match name {
        "file" => s(v.file),
        "file_name" => v.path.map(|p| p.rsplit('/').next().unwrap_or(p).to_owned()),
        "path" => s(v.path),
        "key" => s(v.key),
        "size" => v.size.map(|x| x.to_string()),
        "md5" => s(v.md5),
        "sha256" => s(v.sha256),
        "run" => s(v.run),
        "number" => v.number.map(|n| match width {
            Some(w) => format!("{n:0w$}"),
            None => n.to_string(),
        }),
        "period" => s(v.period),
        "detector" => s(v.detector),
        "tape_path" => s(v.tape_path),
        "tape_dir" => v
            .tape_path
            .map(|t| t.rsplit_once('/').map(|(d, _)| d).unwrap_or(".").to_owned()),
        "dest" => s(v.dest),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn renders_each_token_alone() {
        let t = Template::parse(&argv(&[
            "jput",
            "{file}",
            "/mss/halld/RunPeriod-{period}/Run{number:06}/",
            "-description=ferry sha256={sha256}",
        ]))
        .unwrap();
        let v = Vars {
            file: Some("/cache/a b;rm -rf.evio"),
            period: Some("2019-11"),
            number: Some(71234),
            sha256: Some("ab"),
            ..Vars::default()
        };
        assert_eq!(
            t.render(&v).unwrap(),
            argv(&[
                "jput",
                "/cache/a b;rm -rf.evio",
                "/mss/halld/RunPeriod-2019-11/Run071234/",
                "-description=ferry sha256=ab"
            ])
        );
        let e = t.render(&Vars::default()).unwrap_err();
        assert!(e.contains("{file}"), "{e}");
    }

    #[test]
    fn tape_dir_and_file_name() {
        let t = Template::parse(&argv(&["x", "{tape_dir}/", "{file_name}"])).unwrap();
        let v = Vars {
            tape_path: Some("/mss/r/raw/a.evio"),
            path: Some("raw/a.evio"),
            ..Vars::default()
        };
        assert_eq!(t.render(&v).unwrap(), argv(&["x", "/mss/r/raw/", "a.evio"]));
        assert!(t.uses("tape_dir") && !t.uses("file"));
    }

    #[test]
    fn unknown_placeholder_is_an_error() {
        let e = Template::parse(&argv(&["jput", "{fiel}"])).unwrap_err();
        assert!(e.contains("unknown placeholder {fiel}"), "{e}");
        assert!(e.contains("did you mean \"file\""), "{e}");
    }
}
