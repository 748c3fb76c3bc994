//! The tape tools' output parsers (`tape::command::parse`: key=value stubs, `dsmc` summary
//! and query listing, `hsi hashlist`; `tape::tar::parse_mtx_status`) on arbitrary text.
//! The first line is also used as the path the listing parsers look for.
//!
//! Properties: no panic; a CRC parsed from text parses again from its own hex; a stub's
//! checksums are lowercase hex of the right length; a parsed `mtx status` has a drive and
//! barcodes that are trimmed, non-empty and without `:`, and printed back in `mtx`'s own
//! format it parses to the same library.
#![no_main]

use std::fmt::Write as _;

use ferry::tape::command::parse;
use ferry::tape::tar::{parse_mtx_status, MtxStatus};
use libfuzzer_sys::fuzz_target;

fn hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn tag_ok(t: &str) -> bool {
    !t.is_empty() && t.trim() == t && !t.contains(':')
}

/// `status` as `mtx status` prints it.
fn render(status: &MtxStatus) -> String {
    let mut out = String::from("  Storage Changer /dev/sg3:1 Drives, 2 Slots ( 0 Import/Export )\n");
    for (n, drive) in &status.drives {
        match drive {
            None => {
                let _ = writeln!(out, "Data Transfer Element {n}:Empty");
            }
            Some(d) => {
                let _ = write!(out, "Data Transfer Element {n}:Full");
                if let Some(s) = d.from_slot {
                    let _ = write!(out, " (Storage Element {s} Loaded)");
                }
                if let Some(t) = &d.tag {
                    let _ = write!(out, ":VolumeTag = {t}");
                }
                out.push('\n');
            }
        }
    }
    for (n, slot) in &status.slots {
        match slot {
            None => {
                let _ = writeln!(out, "      Storage Element {n}:Empty");
            }
            Some(None) => {
                let _ = writeln!(out, "      Storage Element {n}:Full ");
            }
            Some(Some(t)) => {
                let _ = writeln!(out, "      Storage Element {n}:Full :VolumeTag={t}");
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let path = text.lines().next().unwrap_or("").trim();

    if let Ok(v) = parse::parse_crc32(&text) {
        assert_eq!(parse::parse_crc32(&format!("{v:x}")), Ok(v));
    }
    if let Ok(stub) = parse::parse_stub(&text) {
        assert!(stub.md5.as_deref().is_none_or(|m| hex(m, 32)), "{stub:?}");
        assert!(stub.sha256.as_deref().is_none_or(|s| hex(s, 64)), "{stub:?}");
    }
    let _ = parse::parse_dsmc_summary(&text);
    let _ = parse::parse_dsmc_query(&text, path);
    let _ = parse::parse_hsi_hashlist(&text, path);
    let _ = parse::says_missing(&text);

    if let Ok(status) = parse_mtx_status(&text) {
        assert!(!status.drives.is_empty());
        for d in status.drives.values().flatten() {
            assert!(d.tag.as_deref().is_none_or(tag_ok), "{d:?}");
        }
        for t in status.slots.values().flatten().flatten() {
            assert!(tag_ok(t), "{t:?}");
        }
        // Printed back, only tags that cannot be mistaken for mtx's own words.
        let plain = |t: &str| !t.contains("VolumeTag") && !t.contains("(Storage Element");
        let all_plain = status
            .drives
            .values()
            .flatten()
            .filter_map(|d| d.tag.as_deref())
            .chain(status.slots.values().flatten().flatten().map(String::as_str))
            .all(plain);
        if all_plain {
            let again = parse_mtx_status(&render(&status))
                .unwrap_or_else(|e| panic!("printed status does not parse: {e}"));
            assert_eq!(again, status);
        }
    }
});
