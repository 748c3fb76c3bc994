//! Every ```json example in README.md and docs/*.md holds when copied: site maps pass the
//! same validation as `ferry config validate`, tape backend entries pass it inside a
//! minimal site map, catalogue documents are read by the catalogue schema's reader, and
//! everything else (log lines, heartbeats) at least parses as JSON (one value, or one per
//! line).
//!
//! A block that is a fragment on purpose is marked with `<!-- fragment: why -->` on the line
//! before its fence; the reason is required, and such marks should stay rare.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use ferry::config::{parse_str, LoadOptions};
use serde_json::{json, Value};

/// One ```json block: where it starts, its text, and whether it is marked a fragment.
struct Block {
    file: PathBuf,
    line: usize,
    text: String,
    fragment: bool,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn pages() -> Vec<PathBuf> {
    let mut files = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

fn fence_lang(line: &str) -> Option<&str> {
    line.trim_start().strip_prefix("```").map(str::trim)
}

/// The ```json blocks of a Markdown page, with a problem for each bad fragment mark.
fn json_blocks(file: &Path, problems: &mut Vec<String>) -> Vec<Block> {
    let text = std::fs::read_to_string(file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(lang) = fence_lang(lines[i]) else {
            i += 1;
            continue;
        };
        let start = i;
        i += 1;
        while i < lines.len() && fence_lang(lines[i]) != Some("") {
            i += 1;
        }
        if lang == "json" {
            let before = lines[..start]
                .iter()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| l.trim())
                .unwrap_or("");
            let fragment = before.starts_with("<!-- fragment");
            if fragment {
                let why = before
                    .trim_start_matches("<!-- fragment")
                    .trim_end_matches("-->")
                    .trim_start_matches(':')
                    .trim();
                if why.is_empty() {
                    problems.push(format!(
                        "{}:{}: a fragment mark must say why: <!-- fragment: … -->",
                        file.display(),
                        start
                    ));
                }
            }
            out.push(Block {
                file: file.to_path_buf(),
                line: start + 1,
                text: lines[start + 1..i.min(lines.len())].join("\n"),
                fragment,
            });
        }
        i += 1;
    }
    out
}

/// The block as JSON: one value, else one value per non-empty line (JSON log lines).
fn parse(text: &str) -> Result<Vec<Value>, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(v) => Ok(vec![v]),
        Err(whole) => {
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            if lines.len() < 2 {
                return Err(whole.to_string());
            }
            lines
                .iter()
                .enumerate()
                .map(|(n, l)| {
                    serde_json::from_str(l).map_err(|e| {
                        format!(
                            "not one JSON value ({whole}) nor JSON lines (line {}: {e})",
                            n + 1
                        )
                    })
                })
                .collect()
        }
    }
}

/// A site map: validated as `config validate` does (the shared part).
fn check_site_map(text: &str, place: &str) -> Result<(), String> {
    parse_str(text, Path::new(place), &LoadOptions::default())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A tape backend entry: validated inside a minimal site map, with a site for its gateway.
fn check_tape_entry(entry: &Value, place: &str) -> Result<(), String> {
    let mut sites = vec![json!({
        "name": "origin", "method": "local", "origin": true,
        "data_dirs": { "raw": "/data/raw" },
        "tape": [entry]
    })];
    if let Some(gw) = entry.get("gateway").and_then(Value::as_str) {
        sites.push(json!({ "name": gw, "method": "sftp", "hostname": "gateway.example" }));
    }
    let map = json!({ "version": 1, "sites": sites });
    check_site_map(&serde_json::to_string_pretty(&map).unwrap(), place)
}

/// A run document, or the `tape` field of a copy: read by the catalogue schema's reader.
fn check_catalogue(doc: &Value) -> Result<(), String> {
    let run = if doc.get("number").is_some() {
        doc.clone()
    } else {
        json!({ "number": 1, "data": [{
            "host": "tape", "type": "raw", "status": "transferred", "tape": doc["tape"]
        }]})
    };
    let bson = bson::to_document(&run).map_err(|e| e.to_string())?;
    let run = catalog_schema::RunDoc::from_document(bson).map_err(|e| e.to_string())?;
    // The schema keeps a copy's `tape` field as a document; its shape is what the tape
    // task writes and `ferry runs show` reads (docs/tape.md).
    for c in run.data.iter().filter_map(|c| c.tape.as_ref()) {
        for key in ["backend", "reference"] {
            c.get_str(key).map_err(|e| format!("tape.{key}: {e}"))?;
        }
        let volumes = c
            .get_array("volumes")
            .map_err(|e| format!("tape.volumes: {e}"))?;
        if volumes.iter().any(|v| v.as_str().is_none()) {
            return Err("tape.volumes: not all strings".into());
        }
        if let Ok(v) = c.get_document("verified") {
            v.get_str("level")
                .map_err(|e| format!("tape.verified.level: {e}"))?;
        }
    }
    Ok(())
}

fn check(block: &Block) -> Result<&'static str, String> {
    let place = format!("{}:{}", block.file.display(), block.line);
    let values = parse(&block.text)?;
    let [Value::Object(o)] = values.as_slice() else {
        return Ok("JSON lines / value");
    };
    if o.contains_key("sites") {
        check_site_map(&block.text, &place)?;
        Ok("site map")
    } else if o.contains_key("kind") && o.contains_key("name") {
        check_tape_entry(&values[0], &place)?;
        Ok("tape backend entry")
    } else if o.contains_key("number") && (o.contains_key("data") || o.contains_key("files"))
        || o.get("tape").is_some_and(Value::is_object)
    {
        check_catalogue(&values[0])?;
        Ok("catalogue document")
    } else {
        Ok("JSON value")
    }
}

#[test]
fn every_json_example_in_the_docs_holds() {
    let mut problems = Vec::new();
    let mut checked = Vec::new();
    for page in pages() {
        for block in json_blocks(&page, &mut problems) {
            let name = page.file_name().unwrap().to_string_lossy().into_owned();
            if block.fragment {
                checked.push(format!("{name}:{} fragment", block.line));
                continue;
            }
            match check(&block) {
                Ok(kind) => checked.push(format!("{name}:{} {kind}", block.line)),
                Err(e) => problems.push(format!(
                    "{}:{}: ```json example does not hold:\n{e}",
                    block.file.display(),
                    block.line
                )),
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
    // The test must see the examples it protects: the complete site map and the tape
    // entries of each kind.
    let kinds = |k: &str| checked.iter().filter(|c| c.ends_with(k)).count();
    assert!(kinds("site map") >= 1, "{checked:?}");
    assert!(kinds("tape backend entry") >= 3, "{checked:?}");
}

/// The checks are able to fail: a broken block of each kind is refused.
#[test]
fn a_broken_example_of_each_kind_is_refused() {
    let block = |text: &str| Block {
        file: PathBuf::from("x.md"),
        line: 1,
        text: text.into(),
        fragment: false,
    };
    // A command backend without stat fails every cycle.
    let e = check(&block(
        r#"{ "name": "t", "kind": "command", "put": ["x", "{file}"] }"#,
    ))
    .unwrap_err();
    assert!(e.contains("`stat`"), "{e}");
    let e = check(&block(
        r#"{ "version": 1, "sites": [{ "name": "a", "push_to": ["b"] }] }"#,
    ))
    .unwrap_err();
    assert!(e.contains("unknown site"), "{e}");
    let e = check(&block(r#"{ "tape": { "backend": 7 } }"#)).unwrap_err();
    assert!(e.contains("tape"), "{e}");
    assert!(check(&block("\"tape\": { \"backend\": \"lto\" }")).is_err());
    assert_eq!(
        check(&block("{\"level\":\"info\"}\n{\"level\":\"warn\"}")),
        Ok("JSON lines / value")
    );
}
