//! Run catalogue document types for Ferry.
