//! The indexes of the run catalogue, as data.
//!
//! The MongoDB back end creates these at start-up (idempotently: same name, same keys);
//! the embedded back end has the equivalent SQLite indexes. Every query the daemon issues is
//! served by one of them; `tests/tests/catalog_explain.rs` checks that with `explain`.
//!
//! | name                         | keys                                   | serves                         |
//! |------------------------------|----------------------------------------|--------------------------------|
//! | `detector_number`            | `detector, number` (unique)            | every update of one run        |
//! | `detector_name`              | `detector, name` (unique, names only)  | `runs show NAME`, registration |
//! | `data_host_status`           | `data.host, data.status`               | collaborator queries by site   |
//! | `data_host_status_key`       | `data.host_status`                     | work lists per site (see below)|
//! | `data_status_lease_expires`  | `data.status, data.lease.expires`      | stalled copies                 |
//! | `want`                       | `want` (multikey)                      | runs needing a copy            |
//! | `number`                     | `number`                               | `runs show N` (any detector)   |
//! | `name`                       | `name`                                 | `runs show NAME`               |
//! | `start`                      | `start`                                | `runs list --since`            |
//!
//! `data.host_status` is an index field the MongoDB back end writes in the same update as a
//! copy's `status`: `"<host>/<status>"`. A site's work list ("copies at HOST in STATUS") is
//! then one point lookup on any server; the compound multikey index needs a planner that
//! bounds both keys of an `$elemMatch`, which mongod does and the MongoDB-wire server of the
//! tests does not. The back end strips the field when it reads documents.

/// One index: its name, its keys (field, 1 or -1), whether it is unique, and an optional
/// "only documents where FIELD has BSON type TYPE" partial filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexSpec {
    /// The index name (stable: start-up creation is idempotent by name).
    pub name: &'static str,
    /// The key fields, in order, with direction.
    pub keys: &'static [(&'static str, i32)],
    /// Whether two documents may share the key.
    pub unique: bool,
    /// Index only documents where this field has this BSON type (`$type`).
    pub partial_type: Option<(&'static str, &'static str)>,
}

/// The indexes of the `runs` collection.
pub const RUN_INDEXES: &[IndexSpec] = &[
    IndexSpec {
        name: "detector_number",
        keys: &[("detector", 1), ("number", 1)],
        unique: true,
        partial_type: None,
    },
    IndexSpec {
        name: "detector_name",
        keys: &[("detector", 1), ("name", 1)],
        unique: true,
        // DAQ documents without a name must not collide on `null`.
        partial_type: Some(("name", "string")),
    },
    IndexSpec {
        name: "data_host_status",
        keys: &[("data.host", 1), ("data.status", 1)],
        unique: false,
        partial_type: None,
    },
    IndexSpec {
        name: "data_host_status_key",
        keys: &[("data.host_status", 1)],
        unique: false,
        partial_type: None,
    },
    IndexSpec {
        name: "data_status_lease_expires",
        keys: &[("data.status", 1), ("data.lease.expires", 1)],
        unique: false,
        partial_type: None,
    },
    IndexSpec {
        name: "want",
        keys: &[("want", 1)],
        unique: false,
        partial_type: None,
    },
    IndexSpec {
        name: "number",
        keys: &[("number", 1)],
        unique: false,
        partial_type: None,
    },
    IndexSpec {
        name: "name",
        keys: &[("name", 1)],
        unique: false,
        partial_type: None,
    },
    IndexSpec {
        name: "start",
        keys: &[("start", 1)],
        unique: false,
        partial_type: None,
    },
];

/// The indexes of the `heartbeats` collection (`_id` is the site; nothing else needed).
pub const HEARTBEAT_INDEXES: &[IndexSpec] = &[];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_unique_and_required_indexes_present() {
        let mut names: Vec<_> = RUN_INDEXES.iter().map(|i| i.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), RUN_INDEXES.len());
        let keys = |k: &[(&str, i32)]| RUN_INDEXES.iter().find(|i| i.keys == k).copied();
        assert!(keys(&[("detector", 1), ("number", 1)]).unwrap().unique);
        assert!(keys(&[("detector", 1), ("name", 1)]).unwrap().unique);
        assert!(
            !keys(&[("data.host", 1), ("data.status", 1)])
                .unwrap()
                .unique
        );
    }
}
