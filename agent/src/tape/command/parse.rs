//! Parsers for what tape tools print. Each returns a plain value or a reason; the backend
//! wraps the reason into [`TapeError::Parse`](crate::tape::TapeError::Parse) with the argv
//! and the output.
//!
//! - key=value stubs (JLab `/mss` stub files): `size=…`, `md5=…`, `crc32=…` (or `crc=…`),
//!   optionally `sha256=…`. JLab writes the CRC-32 in hex without leading zeros, so CRCs are
//!   kept as numbers and compared as numbers, never as strings.
//! - `dsmc`: the end-of-command summary (`Total number of objects failed: 0`) and the
//!   `query archive` listing (size, path, description — Ferry puts `sha256=…` into the
//!   description so that TSM carries the digest).
//! - `hsi hashlist`: lines `<hash> md5 <path> …`, `(none)` where HPSS holds no hash.

/// What a key=value stub file says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stub {
    /// `size`.
    pub size: u64,
    /// `md5`, lowercase.
    pub md5: Option<String>,
    /// `crc32` / `crc`, as a number.
    pub crc32: Option<u32>,
    /// `sha256`, lowercase.
    pub sha256: Option<String>,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A CRC-32 written in hex, with or without leading zeros (and an optional `0x`).
pub fn parse_crc32(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    if t.is_empty() || t.len() > 8 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("crc32 {s:?} is not 1 to 8 hex digits"));
    }
    u32::from_str_radix(t, 16).map_err(|e| format!("crc32 {s:?}: {e}"))
}

/// Parse a key=value stub. Unknown keys are ignored; a line without `=` (other than blank
/// lines and `#` comments), a missing or bad `size`, or a malformed checksum is an error.
pub fn parse_stub(text: &str) -> Result<Stub, String> {
    let mut size = None;
    let mut out = Stub::default();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("line {}: {line:?} is not key=value", i + 1));
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        match k.as_str() {
            "size" => {
                size = Some(
                    v.parse::<u64>()
                        .map_err(|_| format!("size {v:?} is not a number"))?,
                )
            }
            "md5" => {
                if !is_hex(v, 32) {
                    return Err(format!("md5 {v:?} is not 32 hex digits"));
                }
                out.md5 = Some(v.to_ascii_lowercase());
            }
            "sha256" => {
                if !is_hex(v, 64) {
                    return Err(format!("sha256 {v:?} is not 64 hex digits"));
                }
                out.sha256 = Some(v.to_ascii_lowercase());
            }
            "crc32" | "crc" => out.crc32 = Some(parse_crc32(v)?),
            _ => {}
        }
    }
    out.size = size.ok_or("no size= line")?;
    Ok(out)
}

/// The counts of a `dsmc` end-of-command summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DsmcSummary {
    /// `Total number of objects inspected`.
    pub inspected: Option<u64>,
    /// `… archived`.
    pub archived: Option<u64>,
    /// `… retrieved`.
    pub retrieved: Option<u64>,
    /// `… failed`.
    pub failed: Option<u64>,
    /// ANS message lines (`ANS1228E Sending of object … failed`), in order.
    pub messages: Vec<String>,
}

fn number_with_commas(s: &str) -> Option<u64> {
    let digits: String = s.chars().filter(|c| *c != ',').collect();
    digits.parse().ok()
}

/// Parse a `dsmc` summary; an output without any `Total number of objects` line is an
/// error (the command did not get as far as its summary).
pub fn parse_dsmc_summary(text: &str) -> Result<DsmcSummary, String> {
    let mut out = DsmcSummary::default();
    let mut seen = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("ANS") && line.len() > 8 {
            out.messages.push(line.to_owned());
        }
        let Some(rest) = line.strip_prefix("Total number of objects ") else {
            continue;
        };
        let Some((what, n)) = rest.split_once(':') else {
            continue;
        };
        let n = number_with_commas(n.trim())
            .ok_or_else(|| format!("summary line {line:?}: count is not a number"))?;
        seen = true;
        match what.trim() {
            "inspected" => out.inspected = Some(n),
            "archived" => out.archived = Some(n),
            "retrieved" => out.retrieved = Some(n),
            "failed" => out.failed = Some(n),
            _ => {}
        }
    }
    if seen {
        Ok(out)
    } else {
        Err("no \"Total number of objects\" summary".into())
    }
}

/// `dsmc`'s message when a query finds nothing.
pub const DSMC_NO_MATCH: &str = "ANS1092W";

/// One object of a `dsmc query archive` listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsmcObject {
    /// Size in bytes.
    pub size: u64,
    /// `sha256=…` found in the description, if any.
    pub sha256: Option<String>,
}

/// Find `path` in a `dsmc query archive` listing (the newest, i.e. last, entry wins).
/// `Ok(None)` when the listing says nothing matched ([`DSMC_NO_MATCH`]).
pub fn parse_dsmc_query(text: &str, path: &str) -> Result<Option<DsmcObject>, String> {
    if text.contains(DSMC_NO_MATCH) {
        return Ok(None);
    }
    let mut found = None;
    for line in text.lines() {
        let Some((before, after)) = split_at_path(line, path) else {
            continue;
        };
        let tokens: Vec<&str> = before.split_whitespace().collect();
        // "1,048,576  B  11/22/2026 12:00:00  /path  Never  description…"
        let size = tokens
            .first()
            .and_then(|t| number_with_commas(t))
            .ok_or_else(|| format!("listing line {line:?}: no size"))?;
        let unit = tokens.get(1).copied().unwrap_or("B");
        let factor: u64 = match unit {
            "B" => 1,
            "KB" => 1 << 10,
            "MB" => 1 << 20,
            "GB" => 1 << 30,
            other => return Err(format!("listing line {line:?}: unknown unit {other:?}")),
        };
        if factor != 1 {
            return Err(format!(
                "listing line {line:?}: size in {unit} is rounded; query with -detail or in bytes"
            ));
        }
        let sha256 = after
            .split_whitespace()
            .find_map(|t| t.strip_prefix("sha256="))
            .map(|h| {
                if is_hex(h, 64) {
                    Ok(h.to_ascii_lowercase())
                } else {
                    Err(format!("description sha256 {h:?} is not 64 hex digits"))
                }
            })
            .transpose()?;
        found = Some(DsmcObject { size, sha256 });
    }
    match found {
        Some(o) => Ok(Some(o)),
        None => Err(format!("no listing line for {path}")),
    }
}

/// The text before and after `path` in `line`, where `path` stands as a whole field
/// (whitespace or line end on both sides; paths may contain spaces).
fn split_at_path<'a>(line: &'a str, path: &str) -> Option<(&'a str, &'a str)> {
    let mut from = 0;
    while let Some(i) = line[from..].find(path) {
        let start = from + i;
        let end = start + path.len();
        let before_ok = line[..start].ends_with(char::is_whitespace) || start == 0;
        let after_ok = line[end..].starts_with(char::is_whitespace) || end == line.len();
        if before_ok && after_ok {
            return Some((&line[..start], &line[end..]));
        }
        from = start + 1;
        while !line.is_char_boundary(from) {
            from += 1;
        }
    }
    None
}

/// What `hsi hashlist` says of a file: its MD5, or `None` when HPSS holds no hash.
/// `Err` when the file is not in the output at all or a hash is malformed.
pub fn parse_hsi_hashlist(text: &str, path: &str) -> Result<Option<String>, String> {
    for line in text.lines() {
        let Some((before, _)) = split_at_path(line, path) else {
            continue;
        };
        let tokens: Vec<&str> = before.split_whitespace().collect();
        match tokens.as_slice() {
            ["(none)", ..] => return Ok(None),
            [hash, "md5", ..] if is_hex(hash, 32) => return Ok(Some(hash.to_ascii_lowercase())),
            [hash, "md5", ..] => return Err(format!("md5 {hash:?} is not 32 hex digits")),
            [_, other, ..] => return Err(format!("hash type {other:?}, expected md5")),
            _ => return Err(format!("line {line:?} is not `<hash> md5 <path>`")),
        }
    }
    Err(format!("no hashlist line for {path}"))
}

/// Whether an hsi or stub tool's output says the file does not exist.
pub fn says_missing(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("no such file") || t.contains("does not exist") || t.contains("not found")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jlab_stub_with_dropped_crc_zeros() {
        let s = parse_stub(
            "bitfileid=4711\nsize=1048576\nmd5=0cc175b9c0f1b6a831c399e269772661\ncrc32=a1b2c3\nowner=halld\n",
        )
        .unwrap();
        assert_eq!(s.size, 1_048_576);
        assert_eq!(s.crc32, Some(0x00a1_b2c3));
        assert_eq!(s.crc32, Some(parse_crc32("00a1b2c3").unwrap()));
        assert_eq!(s.md5.as_deref(), Some("0cc175b9c0f1b6a831c399e269772661"));
    }

    #[test]
    fn bad_stubs_are_errors() {
        assert!(parse_stub("size=12\nmd5=xyz\n").is_err());
        assert!(parse_stub("md5=0cc175b9c0f1b6a831c399e269772661\n").is_err());
        assert!(parse_stub("size=12\ngarbage line\n").is_err());
        assert!(parse_stub("size=12\ncrc32=123456789\n").is_err());
        assert!(parse_stub("<html>Service unavailable</html>").is_err());
    }

    #[test]
    fn dsmc_summary_counts() {
        let out = "IBM Spectrum Protect\nArchive function invoked.\n\
            ANS1228E Sending of object /a failed.\n\
            Total number of objects inspected:        2\n\
            Total number of objects archived:         1\n\
            Total number of objects failed:           1\n\
            Total number of bytes transferred:   1,024  B\n";
        let s = parse_dsmc_summary(out).unwrap();
        assert_eq!(
            (s.inspected, s.archived, s.failed),
            (Some(2), Some(1), Some(1))
        );
        assert_eq!(s.messages.len(), 1);
        assert!(parse_dsmc_summary("ANS1017E Session rejected").is_err());
    }

    #[test]
    fn dsmc_query_listing() {
        let sha = "a".repeat(64);
        let out = format!(
            "             Size  Archive Date - Time    File - Expires on - Description\n\
             ----  -------------------    -------------------------------\n\
             1,048,576  B  11/22/2026 12:00:00    /stage/r/a.evio Never ferry sha256={sha}\n"
        );
        let o = parse_dsmc_query(&out, "/stage/r/a.evio").unwrap().unwrap();
        assert_eq!(o.size, 1_048_576);
        assert_eq!(o.sha256.as_deref(), Some(sha.as_str()));
        assert_eq!(
            parse_dsmc_query(
                "ANS1092W No files matching search criteria were found",
                "/x"
            )
            .unwrap(),
            None
        );
        assert!(parse_dsmc_query(&out, "/other").is_err());
    }

    #[test]
    fn hsi_hashlist_lines() {
        let out = "0cc175b9c0f1b6a831c399e269772661 md5  /hpss/r/a.evio [hsi]\n\
                   (none)  /hpss/r/b.evio\n";
        assert_eq!(
            parse_hsi_hashlist(out, "/hpss/r/a.evio")
                .unwrap()
                .as_deref(),
            Some("0cc175b9c0f1b6a831c399e269772661")
        );
        assert_eq!(parse_hsi_hashlist(out, "/hpss/r/b.evio").unwrap(), None);
        assert!(parse_hsi_hashlist(out, "/hpss/r/c.evio").is_err());
        assert!(
            parse_hsi_hashlist(out, "/hpss/r/a").is_err(),
            "a prefix is not the file"
        );
        let spaced = "0cc175b9c0f1b6a831c399e269772661 md5  /hpss/r/sub dir/a b.evio [hsi]\n";
        assert!(parse_hsi_hashlist(spaced, "/hpss/r/sub dir/a b.evio")
            .unwrap()
            .is_some());
    }
}
