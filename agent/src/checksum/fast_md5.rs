//! MD5 through AWS-LC's assembly, behind the `digest` traits.
//!
//! MD5 is the slowest part of a copy: one hashing thread runs at the speed of the MD5 round
//! function, which cannot be split across cores. The `md-5` crate's `asm` feature does
//! about 530 MB/s on the benchmark machine, AWS-LC's `md5-x86_64` about 680 MB/s
//! (docs/benchmarks.md, "Hashing"). AWS-LC is already linked for russh's ciphers, so this
//! costs no new dependency on the system, only a thin FFI wrapper.
//!
//! [`Md5`] implements `Default + Update + FixedOutput + HashMarker`, so it is a
//! [`digest::Digest`] and a drop-in replacement for `md5::Md5`. The unit tests check it against
//! RFC 1321's vectors and against the `md-5` crate on random inputs split at random places.
//!
//! This is the only `unsafe` in Ferry. The invariants: the context pointer is non-null (checked
//! at creation), owned by exactly one [`Md5`] (no `Clone`), freed once in `Drop`; every call
//! passes a pointer and length from one live Rust slice.
#![allow(unsafe_code)]

use std::ptr::NonNull;

use aws_lc_sys as ffi;
use sha2::digest::consts::U16;
use sha2::digest::{FixedOutput, HashMarker, Output, OutputSizeUser, Update};

/// Streaming MD5 state (an AWS-LC `EVP_MD_CTX` set up for MD5).
pub struct Md5 {
    ctx: NonNull<ffi::EVP_MD_CTX>,
}

// SAFETY: the context is plain memory owned by this value with no thread affinity; `&self`
// methods do not touch it, so `Sync` is sound as well.
unsafe impl Send for Md5 {}
unsafe impl Sync for Md5 {}

impl Default for Md5 {
    fn default() -> Self {
        // SAFETY: EVP_MD_CTX_new has no preconditions; null (out of memory) is handled below.
        let raw = unsafe { ffi::EVP_MD_CTX_new() };
        let Some(ctx) = NonNull::new(raw) else {
            // The allocator failed: the same outcome as Rust's own allocation failure.
            std::alloc::handle_alloc_error(std::alloc::Layout::new::<[u8; 256]>());
        };
        // SAFETY: ctx is a fresh context; EVP_md5 returns a static method table.
        let rc =
            unsafe { ffi::EVP_DigestInit_ex(ctx.as_ptr(), ffi::EVP_md5(), std::ptr::null_mut()) };
        // MD5's init cannot fail in AWS-LC except for allocation, which aborts there.
        assert_eq!(rc, 1, "AWS-LC EVP_DigestInit_ex(md5) failed");
        Md5 { ctx }
    }
}

impl Drop for Md5 {
    fn drop(&mut self) {
        // SAFETY: ctx came from EVP_MD_CTX_new and is freed exactly once, here.
        unsafe { ffi::EVP_MD_CTX_free(self.ctx.as_ptr()) }
    }
}

impl std::fmt::Debug for Md5 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Md5 { .. }")
    }
}

impl HashMarker for Md5 {}

impl OutputSizeUser for Md5 {
    type OutputSize = U16;
}

impl Update for Md5 {
    fn update(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        // SAFETY: ctx is live and initialised for MD5; data is a live slice of data.len() bytes.
        let rc =
            unsafe { ffi::EVP_DigestUpdate(self.ctx.as_ptr(), data.as_ptr().cast(), data.len()) };
        // MD5's update has no failure path in AWS-LC (it always returns 1).
        assert_eq!(rc, 1, "AWS-LC EVP_DigestUpdate(md5) failed");
    }
}

impl FixedOutput for Md5 {
    fn finalize_into(self, out: &mut Output<Self>) {
        let mut len = 0u32;
        // SAFETY: ctx is live; out has room for 16 bytes, MD5's output size
        // (EVP_MAX_MD_SIZE is only needed for unknown digests).
        let rc = unsafe { ffi::EVP_DigestFinal_ex(self.ctx.as_ptr(), out.as_mut_ptr(), &mut len) };
        assert!(
            rc == 1 && len == 16,
            "AWS-LC EVP_DigestFinal_ex(md5) failed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::Md5;
    use sha2::digest::Digest;

    fn hex(d: impl AsRef<[u8]>) -> String {
        hex::encode(d)
    }

    #[test]
    fn rfc1321_vectors() {
        let cases: [(&[u8], &str); 7] = [
            (b"", "d41d8cd98f00b204e9800998ecf8427e"),
            (b"a", "0cc175b9c0f1b6a831c399e269772661"),
            (b"abc", "900150983cd24fb0d6963f7d28e17f72"),
            (b"message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
            (
                b"abcdefghijklmnopqrstuvwxyz",
                "c3fcd3d76192e4007dfb496cca67e13b",
            ),
            (
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
                "d174ab98d277d9f5a5611c2c9f419d9f",
            ),
            (
                b"12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                "57edf4a22be3c955ac49da2e2107b67a",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(hex(Md5::digest(input)), want, "input {:?}", input);
        }
    }

    #[test]
    fn matches_the_md5_crate_for_any_split() {
        // A deterministic pseudo-random stream, cut at uneven places around the 64-byte
        // block size, so the buffering of partial blocks is exercised.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..50 {
            let len = (next() % 5000) as usize;
            let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let mut ours = Md5::new();
            let mut rest = &data[..];
            while !rest.is_empty() {
                let cut = ((next() % 130) as usize).min(rest.len());
                ours.update(&rest[..cut]);
                rest = &rest[cut..];
            }
            assert_eq!(
                hex(ours.finalize()),
                hex(md5::Md5::digest(&data)),
                "len {len}"
            );
        }
    }

    #[test]
    fn a_megabyte_and_an_odd_tail() {
        let data: Vec<u8> = (0..(1usize << 20) + 7)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        assert_eq!(hex(Md5::digest(&data)), hex(md5::Md5::digest(&data)));
    }
}
