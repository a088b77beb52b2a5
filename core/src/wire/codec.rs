//! The message body codec: the one place in colo that names bincode.
//!
//! It owns the bincode configuration of the protocol and keeps the allocation invariant:
//! decoding a message from untrusted bytes never allocates more than [`MESSAGE_LEN_CEILING`]
//! bytes for any one container, whatever length prefix the bytes claim. bincode 2 without a
//! limit believes a length prefix and calls `Vec::with_capacity(len)` for strings and byte
//! vectors; with `with_limit` it first claims `len * size_of::<T>()` against the limit and
//! fails with `LimitExceeded` instead (bincode 2.0.1, `Decoder::claim_container_read`).
//! Sequences decoded through serde (`Vec<PageRange>`) are the other path: serde preallocates at
//! most 1 MiB for them whatever the prefix says (serde_core `size_hint::cautious`), and the
//! element loop then runs out of message bytes. The message slice itself is already bounded by
//! the frame header, so these two guards cover every length *inside* a message.

use bincode::config::{self, Configuration, Limit, LittleEndian, Varint};
use bincode::error::DecodeError;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::WireError;

/// The largest message part any [`super::Limits`] may allow, and the bincode allocation limit.
pub const MESSAGE_LEN_CEILING: u32 = 1 << 20;

/// The protocol's bincode configuration: bincode's standard one (little-endian, variable-length
/// integers) plus the allocation limit.
type WireConfig = Configuration<LittleEndian, Varint, Limit<{ MESSAGE_LEN_CEILING as usize }>>;

const fn wire_config() -> WireConfig {
    config::standard().with_limit::<{ MESSAGE_LEN_CEILING as usize }>()
}

/// Appends the encoding of `value` to `out`; returns the number of bytes written.
pub(crate) fn encode_body<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<usize, WireError> {
    bincode::serde::encode_into_std_write(value, out, wire_config()).map_err(|e| {
        WireError::Malformed {
            detail: format!("cannot encode: {e}"),
        }
    })
}

/// Decodes a `T` that must occupy all of `bytes` in its canonical encoding.
///
/// bincode accepts non-canonical integers (a small value in a wider varint form). colo refuses
/// them: a frame then has exactly one valid byte sequence, so re-encoding a decoded message
/// reproduces the frame (the fuzz target checks this) and two nodes that hold the same messages
/// hold the same bytes. The check re-encodes into a comparing sink, without allocating.
pub(crate) fn decode_body<T: DeserializeOwned + Serialize>(bytes: &[u8]) -> Result<T, WireError> {
    match bincode::serde::decode_from_slice::<T, _>(bytes, wire_config()) {
        Ok((value, used)) if used == bytes.len() => {
            let mut sink = CompareSink {
                expected: bytes,
                pos: 0,
                equal: true,
            };
            let canonical = bincode::serde::encode_into_std_write(&value, &mut sink, wire_config())
                .is_ok()
                && sink.equal
                && sink.pos == bytes.len();
            if canonical {
                Ok(value)
            } else {
                Err(WireError::Malformed {
                    detail: "message is not in canonical encoding".into(),
                })
            }
        }
        Ok((_, used)) => Err(WireError::Malformed {
            detail: format!(
                "message uses {used} of its {} bytes ({} trailing)",
                bytes.len(),
                bytes.len() - used
            ),
        }),
        Err(DecodeError::UnexpectedEnd { additional }) => Err(WireError::Truncated {
            detail: format!(
                "message of {} bytes ends {additional} byte(s) before its last field",
                bytes.len()
            ),
        }),
        Err(DecodeError::LimitExceeded) => Err(WireError::Malformed {
            detail: format!(
                "a length inside the message exceeds the decode limit of {MESSAGE_LEN_CEILING} bytes"
            ),
        }),
        Err(e) => Err(WireError::Malformed {
            detail: e.to_string(),
        }),
    }
}

/// An `io::Write` that checks the bytes written equal `expected`, in order.
struct CompareSink<'a> {
    expected: &'a [u8],
    pos: usize,
    equal: bool,
}

impl std::io::Write for CompareSink<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let end = self.pos.saturating_add(data.len());
        if self.expected.get(self.pos..end) != Some(data) {
            self.equal = false;
        }
        self.pos = end;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    /// A type with the containers bincode preallocates for (a string and a byte vector),
    /// standing in for any future message field of those types.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Containers {
        name: String,
        data: serde_bytes_like::Bytes,
    }

    /// `Vec<u8>` through serde is a sequence; a `deserialize_byte_buf` newtype exercises
    /// bincode's own `Vec<u8>` decode, the path that preallocates from the length prefix.
    mod serde_bytes_like {
        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        #[derive(Debug, PartialEq)]
        pub struct Bytes(pub Vec<u8>);

        impl Serialize for Bytes {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for Bytes {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = Bytes;
                    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                        f.write_str("bytes")
                    }
                    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Bytes, E> {
                        Ok(Bytes(v))
                    }
                    fn visit_bytes<E>(self, v: &[u8]) -> Result<Bytes, E> {
                        Ok(Bytes(v.to_vec()))
                    }
                }
                d.deserialize_byte_buf(V)
            }
        }
    }

    /// bincode's standard varint for a u64 above 2^32: marker 253 then 8 little-endian bytes.
    fn varint_u64(v: u64) -> Vec<u8> {
        let mut out = vec![253u8];
        out.extend_from_slice(&v.to_le_bytes());
        out
    }

    #[test]
    fn containers_round_trip() {
        let value = Containers {
            name: "colo".into(),
            data: serde_bytes_like::Bytes(vec![1, 2, 3]),
        };
        let mut out = Vec::new();
        let n = encode_body(&value, &mut out).unwrap();
        assert_eq!(n, out.len());
        assert_eq!(decode_body::<Containers>(&out).unwrap(), value);
    }

    #[test]
    fn lying_string_length_is_refused_before_allocating() {
        // A string claiming 2^60 bytes: without the limit bincode would try to reserve it and
        // abort the process (capacity overflow or OOM); with it the claim fails first.
        let bytes = varint_u64(1 << 60);
        let err = decode_body::<Containers>(&bytes).unwrap_err();
        assert!(
            matches!(&err, WireError::Malformed { detail } if detail.contains("decode limit")),
            "{err:?}"
        );
    }

    #[test]
    fn lying_byte_vector_length_is_refused_before_allocating() {
        // Valid empty name, then a byte vector claiming 2^40 bytes.
        let mut bytes = vec![0u8];
        bytes.extend(varint_u64(1 << 40));
        let err = decode_body::<Containers>(&bytes).unwrap_err();
        assert!(
            matches!(&err, WireError::Malformed { detail } if detail.contains("decode limit")),
            "{err:?}"
        );
    }

    #[test]
    fn length_just_over_ceiling_is_refused() {
        let mut bytes = vec![0u8];
        bytes.push(253);
        bytes.extend_from_slice(&(u64::from(MESSAGE_LEN_CEILING) + 1).to_le_bytes());
        assert!(decode_body::<Containers>(&bytes).is_err());
    }

    #[test]
    fn non_canonical_integer_is_malformed() {
        // 5 as a u16-form varint (marker 251) instead of the single byte 5.
        let bytes = [251u8, 5, 0];
        let err = decode_body::<u32>(&bytes).unwrap_err();
        assert!(
            matches!(&err, WireError::Malformed { detail } if detail.contains("canonical")),
            "{err:?}"
        );
        assert_eq!(decode_body::<u32>(&[5]).unwrap(), 5);
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let mut out = Vec::new();
        encode_body(&7u32, &mut out).unwrap();
        out.push(0);
        assert!(matches!(
            decode_body::<u32>(&out),
            Err(WireError::Malformed { .. })
        ));
    }

    #[test]
    fn short_body_is_truncated() {
        let mut out = Vec::new();
        encode_body(&u64::MAX, &mut out).unwrap();
        out.pop();
        assert!(matches!(
            decode_body::<u64>(&out),
            Err(WireError::Truncated { .. })
        ));
    }
}
