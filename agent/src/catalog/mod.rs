//! The run catalogue: where every copy of every run is, its state and its digest.
//!
//! - [`uri`]: catalogue locations, parsed once, password redacted in every printout.

pub mod uri;

pub use uri::CatalogUri;
