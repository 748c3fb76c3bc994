//! # Ferry agent
//!
//! Ferry moves experiment run data between the sites of a collaboration, proves every
//! copy with checksums and records every copy in one run catalogue. One agent runs per
//! site; all agents read the same JSON site map.
//!
//! ## Layout
//!
//! One module per concern, each with a small public surface. Who may use whom:
//!
//! | module      | what it holds                                                   | uses            |
//! |-------------|-----------------------------------------------------------------|-----------------|
//! | [`config`]  | the site map: raw JSON → validated model, legacy `cax.json`      | nothing         |
//! | [`checksum`]| streaming SHA-256 + MD5 hashers, the run digest                  | nothing         |
//! | [`catalog`] | the `Catalog` trait and its back ends (`mongo`, `embedded`)      | `catalog-schema`|
//! | [`transport`]| SSH sessions, SFTP copies, local copies, remote commands        | `checksum`      |
//! | [`tape`]    | the `TapeBackend` trait; `directory`, `command`, `tar` backends   | `transport`, `checksum` |
//! | [`daemon`]  | the cycle loop, shutdown, the single-instance site lock       | nothing         |
//! | [`journal`] | verified copies whose record the catalogue could not take, replayed later | `catalog` |
//! | [`datadir`] | paths below data directories (exact locations, no links); data-directory identity and locks | `config`, `daemon::lock` |
//! | [`agent`]   | the one place an agent is assembled (`Agent::build`) and run    | `tasks`, `daemon` |
//! | [`serve`]   | `ferry serve`: the read-only web view and JSON API of the catalogue | `catalog` |
//! | [`cli`]     | the command line: argument parsing, logging, exit codes          | everything      |
//!
//! `config`, `checksum`, `catalog` and `transport` know nothing of the agent's tasks or of
//! the command line. The binary (`src/main.rs`) is a thin shell over [`cli::main`].

pub mod agent;
pub mod catalog;
pub mod checksum;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod datadir;
pub mod journal;
pub mod metrics;
pub mod serve;
pub mod tape;
pub mod tasks;
pub mod transport;
