//! Test-service harness for Ferry's end-to-end tests.
