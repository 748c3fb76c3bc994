//! Lenient integer decoding.
//!
//! pymongo writes small Python ints as BSON int32, the Rust driver writes i64, and mongosh
//! writes every number literal as a double. Run numbers, sizes and attempt counts accept all
//! three, as long as a double is a whole number.

use serde::de::{self, Deserializer, Visitor};
use std::fmt;

struct IntLike;

impl Visitor<'_> for IntLike {
    type Value = i64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer (int32, int64 or a whole double)")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::custom(format!("{v} is too large")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
        if v.fract() == 0.0 && v.abs() < 9.0e15 {
            #[allow(clippy::cast_possible_truncation)]
            Ok(v as i64)
        } else {
            Err(E::custom(format!("{v} is not a whole number")))
        }
    }
}

/// Deserializes an `i64` from int32, int64 or a whole double.
pub fn int_like<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    d.deserialize_any(IntLike)
}

/// Like [`int_like`] for an optional field (`null` or missing is `None`).
pub fn opt_int_like<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    struct OptIntLike;
    impl<'de> Visitor<'de> for OptIntLike {
        type Value = Option<i64>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an integer or null")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            int_like(d).map(Some)
        }
    }
    d.deserialize_option(OptIntLike)
}
