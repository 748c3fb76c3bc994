//! Catalogue URI parsing and redaction. A URI is built from an arbitrary scheme, user,
//! password, hosts and tail (each may hold any reserved character, plainly or
//! percent-encoded); the password always carries a marker character (🔑) that nothing else
//! holds. Properties: parsing never panics; no printout (`Display`, `Debug`, `redact`, the
//! error, `scrub` of a driver message quoting the URI) contains the marker, raw or
//! percent-encoded, so no piece of the password around it leaks; when the URI is
//! unambiguous, the parser splits it exactly where it was built; `expose` hands the driver
//! the URI as given.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

use ferry::catalog::uri::{redact, split};
use ferry::catalog::CatalogUri;

const MARK: char = '🔑';
const SCHEMES: &[&str] = &[
    "mongodb://",
    "mongodb+srv://",
    "postgres://",
    "mongodb:",
    "sqlite:",
    "sqlite://",
    "",
    "x://",
];

#[derive(Arbitrary, Debug)]
struct Input {
    scheme: u8,
    user: String,
    password: String,
    /// Where the markers go in the password (indexes modulo its length + 1).
    marks: Vec<u8>,
    hosts: String,
    tail: String,
    encode_user: bool,
    encode_password: bool,
    with_password: bool,
}

fn leaks(shown: &str) -> bool {
    let upper = shown.to_ascii_uppercase();
    shown.contains(MARK) || upper.contains("%F0%9F%94%91")
}

fuzz_target!(|input: Input| {
    // The marker must come only from the password: hosts and tail are shown side by side,
    // so they are checked together.
    let public = [input.user.clone(), format!("{}{}", input.hosts, input.tail)];
    if public.iter().any(|p| leaks(p)) {
        return;
    }
    let mut pw: Vec<char> = input.password.chars().collect();
    for m in input.marks.iter().take(8).chain(std::iter::once(&0)) {
        let at = *m as usize % (pw.len() + 1);
        pw.insert(at, MARK);
    }
    let password: String = pw.into_iter().collect();
    // The promise covers passwords of 4 characters or more (shorter ones are hidden as part
    // of the URI, but a driver message quoting only them cannot be scrubbed).
    if password.chars().count() < 4 {
        return;
    }
    let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
    let user = if input.encode_user {
        enc(&input.user)
    } else {
        input.user.clone()
    };
    let written = if input.encode_password {
        enc(&password)
    } else {
        password.clone()
    };
    let scheme = SCHEMES[input.scheme as usize % SCHEMES.len()];
    let uri = if input.with_password {
        format!("{scheme}{user}:{written}@{}{}", input.hosts, input.tail)
    } else {
        // No password part: the marker rides in the user name's place, which is shown, so
        // only check that nothing panics.
        let uri = format!("{scheme}{user}@{}{}", input.hosts, input.tail);
        let _ = redact(&uri);
        let _ = CatalogUri::parse(&uri).map(|u| (u.to_string(), format!("{u:?}")));
        return;
    };

    // An embedded catalogue's "URI" is a file path: it has no password to hide.
    let t = uri.trim_start();
    if t.starts_with("sqlite:") || t.starts_with("embedded:") {
        let _ = CatalogUri::parse(&uri).map(|u| (u.to_string(), format!("{u:?}")));
        return;
    }
    let mut printouts = vec![redact(&uri)];
    match CatalogUri::parse(&uri) {
        Ok(parsed) => {
            printouts.push(parsed.to_string());
            printouts.push(format!("{parsed:?}"));
            let driver = format!("driver: bad URI {uri} (password {password}, {written})");
            printouts.push(parsed.scrub(&driver));
            if let CatalogUri::Mongo { raw } = &parsed {
                assert_eq!(raw, uri.trim(), "the driver must get the URI as given");
                assert!(parsed.to_string().contains("****"), "{parsed}");
            }
            assert!(CatalogUri::parse(&parsed.expose()).is_ok());
        }
        Err(e) => {
            printouts.push(e.to_string());
            printouts.push(format!("{e:?}"));
        }
    }
    for shown in &printouts {
        assert!(!leaks(shown), "password leaked from {uri:?}: {shown:?}");
    }
    // Unambiguous (no `@` after the password, no `:` or `@` in the user as written): the
    // split is exactly where the URI was built.
    let unambiguous = !input.hosts.contains('@')
        && !input.tail.contains('@')
        && !user.contains([':', '@'])
        && scheme.ends_with("://");
    if unambiguous {
        let parts = split(&uri).expect("has ://");
        assert_eq!(parts.user, Some(user.as_str()));
        assert_eq!(parts.password, Some(written.as_str()));
    }
});
