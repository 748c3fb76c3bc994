//! Diagnostics: one problem found in a site map, with the file and the place.
//!
//! A [`Diagnostic`] always names its file and at least one of a line:column
//! ([`LineCol`]) or a JSON path (`sites[2].push_to[0]`); semantic problems carry both when
//! the position is known. Its `Display` is the one-line form printed by
//! `ferry config validate`:
//!
//! ```text
//! site-map.json:14:7: error: sites[2].push_to[0]: unknown site "mirorr" (did you mean "mirror"?)
//! ```

use std::fmt;
use std::path::PathBuf;

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The site map cannot be used.
    Error,
    /// The site map loads, but something was ignored, mapped or is risky.
    Warning,
    /// The site map loads and works; an optional part is not configured (such as a tape
    /// backend without `retrieve`, which `ferry recall` then skips). Shown by
    /// `ferry config validate`, not logged by the agent.
    Note,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Error => "error",
            Self::Warning => "warning",
            Self::Note => "note",
        })
    }
}

/// A 1-based line and column; columns count Unicode scalar values, not bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LineCol {
    /// Line, from 1.
    pub line: u32,
    /// Column, from 1, in characters.
    pub col: u32,
}

impl fmt::Display for LineCol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// Where in the file a problem is: a position, a JSON path, or both.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Location {
    /// Line and column of the offending value, when known.
    pub line_col: Option<LineCol>,
    /// JSON path of the offending value, such as `sites[2].push_to[0]`.
    pub path: Option<String>,
}

impl Location {
    /// A location with both a position and a path.
    pub fn at(line_col: LineCol, path: impl Into<String>) -> Self {
        Self {
            line_col: Some(line_col),
            path: Some(path.into()),
        }
    }
}

/// One problem in a site map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The site map file (or the SSH config file for problems found there).
    pub file: PathBuf,
    /// Where in the file.
    pub location: Location,
    /// What is wrong, without the place.
    pub message: String,
    /// A likely fix, such as the nearest known name.
    pub suggestion: Option<String>,
}

impl Diagnostic {
    /// Whether this is an error (not a warning).
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(lc) = self.location.line_col {
            write!(f, ":{lc}")?;
        }
        write!(f, ": {}: ", self.severity)?;
        if let Some(path) = &self.location.path {
            write!(f, "{path}: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(s) = &self.suggestion {
            write!(f, " ({s})")?;
        }
        Ok(())
    }
}

/// The nearest candidate to `word`, if any is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let lower = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| {
            let d = strsim::damerau_levenshtein(&lower, &c.to_ascii_lowercase());
            (d, c)
        })
        .filter(|(d, c)| *d <= (c.chars().count() / 3).max(1) && *d < c.chars().count())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| format!("did you mean \"{c}\"?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_file_place_and_suggestion() {
        let d = Diagnostic {
            severity: Severity::Error,
            file: PathBuf::from("site-map.json"),
            location: Location::at(LineCol { line: 14, col: 7 }, "sites[2].push_to[0]"),
            message: "unknown site \"mirorr\"".into(),
            suggestion: did_you_mean("mirorr", ["daq", "mirror"]),
        };
        assert_eq!(
            d.to_string(),
            "site-map.json:14:7: error: sites[2].push_to[0]: unknown site \"mirorr\" (did you mean \"mirror\"?)"
        );
    }

    #[test]
    fn no_suggestion_for_unrelated_words() {
        assert_eq!(did_you_mean("zzzzzz", ["daq", "mirror"]), None);
        assert_eq!(
            did_you_mean("b", ["a"]),
            None,
            "one-letter names are not typos of each other"
        );
        assert_eq!(
            did_you_mean("Hostname", ["hostname", "port"]).as_deref(),
            Some("did you mean \"hostname\"?")
        );
    }
}
