//! The site-map loader on arbitrary text: the raw JSON reader, Ferry's format and the
//! cross-site checks. Never panics; a rejection always has an error with a place; a loaded
//! map keeps every promise of `config::load` (see `src/lib.rs`).

#![no_main]

use libfuzzer_sys::fuzz_target;

use ferry_fuzz as common;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let first = common::check(text).map(|l| l.map);
    // Loading is a function of the text.
    let again = common::check(text).map(|l| l.map);
    assert_eq!(first.is_ok(), again.is_ok());
    if let (Ok(a), Ok(b)) = (&first, &again) {
        assert_eq!(a, b);
    }
});
