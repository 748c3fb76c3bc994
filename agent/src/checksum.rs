//! Streaming checksums (SHA-256 and MD5 in one pass) and the run digest.
