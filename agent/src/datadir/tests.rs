// Test bodies.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use catalog_schema::{CopyEntry, CopyStatus, RunDoc};

use super::*;
use crate::config::{LayoutTemplate, Site};

fn site(root: &Path) -> Site {
    let text = format!(
        r#"{{"version": 1, "sites": [{{"name": "m", "origin": true, "data_dirs": {{"raw": "{}"}}, "layout": "{{number:06}}"}}]}}"#,
        root.display()
    );
    let loaded = crate::config::parse_str(&text, Path::new("m.json"), &Default::default()).unwrap();
    loaded.map.site("m").unwrap().clone()
}

fn run(n: i64) -> RunDoc {
    let mut r: RunDoc = bson::from_document(bson::doc! {"number": n, "detector": "tpc"}).unwrap();
    r.number = n;
    r
}

fn copy_at(location: &str) -> CopyEntry {
    let run = RunDoc::from_document(bson::doc! {
        "number": 7, "detector": "tpc",
        "data": [{"host": "m", "type": "raw", "status": "transferred", "location": location}],
    })
    .unwrap();
    run.data[0].clone()
}

#[test]
fn a_location_naming_another_runs_directory_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let s = site(d.path());
    let r = run(7);
    let own = d.path().join("000007");
    let other = d.path().join("000005");
    assert_eq!(
        check_location(&s, "raw", &r, Some(own.to_str().unwrap())).unwrap(),
        own
    );
    assert_eq!(
        check_location(&s, "raw", &r, Some(&format!("{}/", own.display()))).unwrap(),
        own
    );
    for bad in [
        other.display().to_string(),
        d.path().display().to_string(),
        format!("{}/", d.path().display()),
        format!("{}/..", own.display()),
        format!("{}/./000007", d.path().display()),
        format!("{}//000007", d.path().display()),
        format!("{}/000007//", d.path().display()),
        "000007".into(),
        "/etc".into(),
        String::new(),
        "n/a".into(),
    ] {
        let e = check_location(&s, "raw", &r, Some(&bad)).unwrap_err();
        assert!(e.is_refusal(), "{bad}: {e}");
        let msg = e.to_string();
        assert!(msg.contains("run 7 raw@m"), "{msg}");
        assert!(msg.contains(&format!("{bad:?}")), "{msg}");
        assert!(msg.contains(&own.display().to_string()), "{msg}");
    }
    assert!(matches!(
        check_location(&s, "raw", &r, None),
        Err(PathError::NoLocation { .. })
    ));
}

#[test]
fn a_run_directory_that_is_a_link_is_refused_unless_into_a_link_root() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("all");
    let part = d.path().join("part2");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(part.join("000007")).unwrap();
    std::os::unix::fs::symlink(part.join("000007"), root.join("000007")).unwrap();
    let mut s = site(&root);
    let r = run(7);
    let c = copy_at(root.join("000007").to_str().unwrap());
    let e = copy_dir(&s, &r, &c).unwrap_err();
    assert!(matches!(e, PathError::Symlink { .. }), "{e}");
    assert!(e.to_string().contains("symbolic link"), "{e}");
    s.link_roots = vec![part.clone()];
    assert_eq!(copy_dir(&s, &r, &c).unwrap(), root.join("000007"));
    // A link root does not admit a link to the link root itself or elsewhere.
    std::fs::remove_file(root.join("000007")).unwrap();
    std::os::unix::fs::symlink(d.path(), root.join("000007")).unwrap();
    assert!(copy_dir(&s, &r, &c).is_err());
}

#[test]
fn a_missing_run_directory_is_missing_not_refused() {
    let d = tempfile::tempdir().unwrap();
    let s = site(d.path());
    let r = run(7);
    let c = copy_at(d.path().join("000007").to_str().unwrap());
    let e = copy_dir(&s, &r, &c).unwrap_err();
    assert!(
        matches!(e, PathError::Missing { .. }) && !e.is_refusal(),
        "{e}"
    );
}

#[test]
fn file_in_refuses_links_and_escapes() {
    let d = tempfile::tempdir().unwrap();
    let place = Place {
        run: 1,
        data_type: "raw".into(),
        site: "s".into(),
    };
    let run = d.path().join("run");
    std::fs::create_dir_all(run.join("sub")).unwrap();
    std::fs::write(run.join("sub/a"), b"a").unwrap();
    std::os::unix::fs::symlink(d.path(), run.join("link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", run.join("file-link")).unwrap();
    assert!(file_in(&place, &run, "sub/a").is_ok());
    assert!(file_in(&place, &run, "missing/a").is_ok());
    assert!(matches!(
        file_in(&place, &run, "link/a"),
        Err(PathError::Symlink { .. })
    ));
    assert!(matches!(
        file_in(&place, &run, "file-link"),
        Err(PathError::Symlink { .. })
    ));
    assert!(matches!(
        file_in(&place, &run, "sub/a/b"),
        Err(PathError::WrongKind { .. })
    ));
    for bad in ["../a", "/etc/passwd", "", "a//b", "./a", "a/.."] {
        assert!(
            matches!(
                file_in(&place, &run, bad),
                Err(PathError::UnsafeName { .. })
            ),
            "{bad}"
        );
    }
    // Removing a link removes the link, never its target; a link on the way is refused.
    remove_file_in(&place, &run, "file-link").unwrap();
    assert!(Path::new("/etc/passwd").exists());
    std::fs::write(d.path().join("victim"), b"v").unwrap();
    assert!(remove_file_in(&place, &run, "link/victim").is_err());
    assert!(d.path().join("victim").exists());
}

#[test]
fn layout_values_that_would_escape_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let mut s = site(d.path());
    s.layout = LayoutTemplate::parse("{name}").unwrap();
    let mut r = run(7);
    r.name = Some("../x".into());
    assert!(run_dir(&s, "raw", &r).is_err());
    let _ = CopyStatus::Transferred;
}
