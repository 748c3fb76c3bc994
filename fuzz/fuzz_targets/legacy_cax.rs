//! The legacy cax.json importer: arbitrary text, and host entries built from cax's own keys
//! (so the fuzzer reaches the mapping, not only the JSON reader). Besides the properties of
//! every load (see `src/lib.rs`): an array loads as the legacy format, with no catalogue, no
//! origin site and purging off everywhere (cax's `purge` must never switch purging on).

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

use ferry_fuzz as common;

use ferry::config::SourceFormat;

/// One value of a cax key, from the shapes cax files hold.
#[derive(Arbitrary, Debug)]
enum Val {
    Null,
    Bool(bool),
    Int(i64),
    Str(String),
    Name(u8),
    Path(u8, String),
    List(Vec<u8>),
}

const KEYS: &[&str] = &[
    "name",
    "method",
    "hostname",
    "username",
    "dir_raw",
    "dir_processed",
    "dir_minitrees",
    "data_type",
    "upload_options",
    "download_options",
    "nstreams",
    "dir_tsm",
    "purge",
    "grid_cert",
    "task_list",
    "pax_processing_versions",
    "rucio_account",
    "bogus_key",
];
const WORDS: &[&str] = &[
    "a",
    "b",
    "c",
    "login",
    "midway",
    "scp",
    "rsync",
    "tsm",
    "gfal-copy",
    "lcg-cp",
    "rucio",
    "ftp",
    "raw",
    "processed",
    "minitrees",
    "",
    "a.example",
    "srm://x",
];
const ROOTS: &[&str] = &[
    "/d", "/d/", "d", "/d/..", "/d/./x", "~/d", "/d\u{7}", "/d/raw", "/d/ab",
];

fn json_of(v: &Val) -> String {
    let word = |i: &u8| WORDS[*i as usize % WORDS.len()];
    match v {
        Val::Null => "null".into(),
        Val::Bool(b) => b.to_string(),
        Val::Int(i) => i.to_string(),
        Val::Str(s) => serde_json_string(s),
        Val::Name(i) => serde_json_string(word(i)),
        Val::Path(i, tail) => {
            serde_json_string(&format!("{}{}", ROOTS[*i as usize % ROOTS.len()], tail))
        }
        Val::List(items) => {
            let inner: Vec<String> = items.iter().map(|i| serde_json_string(word(i))).collect();
            format!("[{}]", inner.join(", "))
        }
    }
}

/// A JSON string literal (escapes quotes, backslashes and control characters).
fn serde_json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn entries(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    let mut hosts = Vec::new();
    for _ in 0..u.int_in_range(0..=6)? {
        let mut members = Vec::new();
        for _ in 0..u.int_in_range(0..=12)? {
            let key = KEYS[u.choose_index(KEYS.len())?];
            let value: Val = u.arbitrary()?;
            members.push(format!("{}: {}", serde_json_string(key), json_of(&value)));
        }
        hosts.push(format!("{{{}}}", members.join(", ")));
    }
    Ok(format!("[\n{}\n]", hosts.join(",\n")))
}

fn check_legacy(text: &str) {
    let Ok(loaded) = common::check(text) else {
        return;
    };
    if text.trim_start().starts_with('[') {
        assert_eq!(loaded.format, SourceFormat::LegacyCax);
        assert!(loaded.map.catalog.is_none());
        for site in &loaded.map.sites {
            assert!(
                !site.origin,
                "a legacy site became an origin: {}",
                site.name
            );
            assert!(
                !site.purge.enabled,
                "cax's purge switched purging on at {}",
                site.name
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // Half the inputs as text (the seed corpus: real cax files), half as generated entries.
    match data.split_first() {
        Some((b'G', rest)) => {
            if let Ok(text) = entries(&mut Unstructured::new(rest)) {
                check_legacy(&text);
            }
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(data) {
                check_legacy(text);
            }
        }
    }
});
