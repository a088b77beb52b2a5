//! A zero-copy walker over TCP options (RFC 9293 section 3.1): EOL, NOP, MSS, window scale
//! (RFC 7323), SACK-permitted and SACK blocks (RFC 2018), timestamps (RFC 7323) and unknown kinds
//! carried with their length.
//!
//! Invariant kept: the walker never reads outside the option bytes it was given and never
//! panics. A length that breaks the framing (below 2, past the end of the options) or that the
//! option's RFC does not allow ends the walk with one [`OptionError`]; options before it were
//! already yielded. Receivers do the same: Linux's `tcp_parse_options` stops at a length below 2
//! or past the end, so options before a broken one still take effect, which is why the rewriter
//! still rewrites SACK blocks that precede a malformed option.

use super::SeqNum;

/// Option kind: end of option list.
pub const KIND_EOL: u8 = 0;
/// Option kind: no-operation (padding).
pub const KIND_NOP: u8 = 1;
/// Option kind: maximum segment size.
pub const KIND_MSS: u8 = 2;
/// Option kind: window scale.
pub const KIND_WINDOW_SCALE: u8 = 3;
/// Option kind: SACK permitted.
pub const KIND_SACK_PERMITTED: u8 = 4;
/// Option kind: SACK blocks.
pub const KIND_SACK: u8 = 5;
/// Option kind: timestamps.
pub const KIND_TIMESTAMPS: u8 = 8;

/// Most SACK edges a TCP header can hold: 40 option bytes fit at most four 8-byte blocks.
pub const MAX_SACK_EDGES: usize = 8;

/// One TCP option.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TcpOption<'a> {
    /// End of option list; the walk stops after it (what follows is padding).
    End,
    /// No-operation.
    Nop,
    /// Maximum segment size.
    Mss(u16),
    /// Window scale shift count.
    WindowScale(u8),
    /// SACK permitted (SYN only).
    SackPermitted,
    /// SACK blocks.
    Sack(SackBlocks<'a>),
    /// Timestamps: sender's value and echoed reply.
    Timestamps {
        /// TSval.
        value: u32,
        /// TSecr.
        echo: u32,
    },
    /// A kind this walker does not interpret, with its data (the bytes after kind and length).
    Unknown {
        /// Option kind.
        kind: u8,
        /// Option data.
        data: &'a [u8],
    },
}

/// The blocks of a SACK option: a whole number of 8-byte (left edge, right edge) pairs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SackBlocks<'a>(&'a [u8]);

impl<'a> SackBlocks<'a> {
    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.0.len() / 8
    }

    /// True if there are no blocks (never for a well-formed option).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The blocks as (left edge, right edge) pairs: the left edge is the first sequence number
    /// of a received block, the right edge the one after its last (RFC 2018 section 3).
    pub fn iter(&self) -> impl Iterator<Item = (SeqNum, SeqNum)> + 'a {
        self.0.chunks_exact(8).map(|b| {
            (
                SeqNum(u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
                SeqNum(u32::from_be_bytes([b[4], b[5], b[6], b[7]])),
            )
        })
    }
}

/// Why an option list could not be walked to its end.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum OptionError {
    /// The option's kind byte is the last byte, so its length byte is missing.
    #[error("TCP option kind {kind} at offset {offset} has no length byte")]
    MissingLength {
        /// Offset of the kind byte within the options.
        offset: usize,
        /// Option kind.
        kind: u8,
    },
    /// The length is below 2 or runs past the end of the options.
    #[error("TCP option kind {kind} at offset {offset} has length {len}, {room} bytes remain")]
    BadLength {
        /// Offset of the kind byte within the options.
        offset: usize,
        /// Option kind.
        kind: u8,
        /// The length byte.
        len: u8,
        /// Bytes left from the kind byte to the end of the options.
        room: usize,
    },
    /// The length fits but is not one the option's RFC allows (MSS 4, window scale 3, SACK
    /// permitted 2, timestamps 10, SACK 2 + 8n with n >= 1).
    #[error("TCP option kind {kind} at offset {offset} has length {len}, not allowed for it")]
    WrongLength {
        /// Offset of the kind byte within the options.
        offset: usize,
        /// Option kind.
        kind: u8,
        /// The length byte.
        len: u8,
    },
}

/// Iterator over the options of a TCP header: yields `(offset, option)` with the offset of the
/// option's kind byte within the option bytes, then stops after EOL, at the end of the bytes, or
/// after yielding one error.
#[derive(Clone, Debug)]
pub struct TcpOptions<'a> {
    bytes: &'a [u8],
    at: usize,
    done: bool,
}

impl<'a> TcpOptions<'a> {
    /// Walks `bytes`, the options part of a TCP header (after the 20 fixed bytes, up to the data
    /// offset).
    pub fn new(bytes: &'a [u8]) -> TcpOptions<'a> {
        TcpOptions {
            bytes,
            at: 0,
            done: false,
        }
    }

    fn step(&mut self) -> Option<Result<(usize, TcpOption<'a>), OptionError>> {
        let offset = self.at;
        let kind = *self.bytes.get(offset)?;
        match kind {
            KIND_EOL => {
                self.done = true;
                return Some(Ok((offset, TcpOption::End)));
            }
            KIND_NOP => {
                self.at += 1;
                return Some(Ok((offset, TcpOption::Nop)));
            }
            _ => {}
        }
        let Some(&len) = self.bytes.get(offset + 1) else {
            return Some(Err(OptionError::MissingLength { offset, kind }));
        };
        let room = self.bytes.len() - offset;
        if len < 2 || usize::from(len) > room {
            return Some(Err(OptionError::BadLength {
                offset,
                kind,
                len,
                room,
            }));
        }
        let data = &self.bytes[offset + 2..offset + usize::from(len)];
        let wrong = Err(OptionError::WrongLength { offset, kind, len });
        let option = match kind {
            KIND_MSS if data.len() == 2 => TcpOption::Mss(u16::from_be_bytes([data[0], data[1]])),
            KIND_WINDOW_SCALE if data.len() == 1 => TcpOption::WindowScale(data[0]),
            KIND_SACK_PERMITTED if data.is_empty() => TcpOption::SackPermitted,
            KIND_SACK if !data.is_empty() && data.len().is_multiple_of(8) => {
                TcpOption::Sack(SackBlocks(data))
            }
            KIND_TIMESTAMPS if data.len() == 8 => TcpOption::Timestamps {
                value: u32::from_be_bytes([data[0], data[1], data[2], data[3]]),
                echo: u32::from_be_bytes([data[4], data[5], data[6], data[7]]),
            },
            KIND_MSS | KIND_WINDOW_SCALE | KIND_SACK_PERMITTED | KIND_SACK | KIND_TIMESTAMPS => {
                return Some(wrong);
            }
            _ => TcpOption::Unknown { kind, data },
        };
        self.at += usize::from(len);
        Some(Ok((offset, option)))
    }
}

impl<'a> Iterator for TcpOptions<'a> {
    type Item = Result<(usize, TcpOption<'a>), OptionError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.step();
        if matches!(item, None | Some(Err(_))) {
            self.done = true;
        }
        item
    }
}

/// Offsets (within the option bytes) of every SACK edge, in order, found before the walk ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct SackEdges {
    offsets: [usize; MAX_SACK_EDGES],
    len: usize,
    /// The error that ended the walk early, if any.
    pub error: Option<OptionError>,
}

impl SackEdges {
    /// Collects the edge offsets of every SACK option in `options`.
    pub fn find(options: &[u8]) -> SackEdges {
        let mut edges = SackEdges::default();
        for item in TcpOptions::new(options) {
            match item {
                Ok((offset, TcpOption::Sack(blocks))) => {
                    for i in 0..blocks.len() * 2 {
                        // 40 option bytes cannot hold more than MAX_SACK_EDGES edges, but the
                        // bound keeps this safe even for a caller passing a longer slice.
                        if edges.len < MAX_SACK_EDGES {
                            edges.offsets[edges.len] = offset + 2 + 4 * i;
                            edges.len += 1;
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => edges.error = Some(e),
            }
        }
        edges
    }

    /// The edge offsets.
    pub fn offsets(&self) -> &[usize] {
        &self.offsets[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn walk_over_arbitrary_bytes_stays_in_bounds_and_ends(
            bytes in proptest::collection::vec(any::<u8>(), 0..48)
        ) {
            let mut count = 0;
            let mut last = None;
            for item in TcpOptions::new(&bytes) {
                count += 1;
                prop_assert!(count <= bytes.len());
                if let Ok((offset, _)) = item {
                    prop_assert!(offset < bytes.len());
                    prop_assert!(last.is_none_or(|l| offset > l));
                    last = Some(offset);
                }
            }
            for &e in SackEdges::find(&bytes).offsets() {
                prop_assert!(e + 4 <= bytes.len());
            }
        }
    }

    fn walk(bytes: &[u8]) -> Vec<Result<(usize, TcpOption<'_>), OptionError>> {
        TcpOptions::new(bytes).collect()
    }

    #[test]
    fn syn_options_are_all_recognised() {
        // MSS 1460, SACK-permitted, timestamps, NOP, window scale 7: Linux's SYN layout.
        let bytes = [
            2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
        ];
        let got: Vec<_> = walk(&bytes).into_iter().map(|r| r.unwrap().1).collect();
        assert_eq!(
            got,
            vec![
                TcpOption::Mss(1460),
                TcpOption::SackPermitted,
                TcpOption::Timestamps { value: 1, echo: 0 },
                TcpOption::Nop,
                TcpOption::WindowScale(7),
            ]
        );
    }

    #[test]
    fn sack_blocks_and_edge_offsets_are_found() {
        let mut bytes = vec![1, 1, 5, 18];
        for v in [100u32, 200, 300, 400] {
            bytes.extend_from_slice(&v.to_be_bytes());
        }
        let items = walk(&bytes);
        let Ok((2, TcpOption::Sack(blocks))) = items[2] else {
            panic!("no SACK option: {items:?}")
        };
        let pairs: Vec<_> = blocks.iter().collect();
        assert_eq!(
            pairs,
            vec![(SeqNum(100), SeqNum(200)), (SeqNum(300), SeqNum(400))]
        );
        let edges = SackEdges::find(&bytes);
        assert_eq!(edges.offsets(), &[4, 8, 12, 16]);
        assert_eq!(edges.error, None);
    }

    #[test]
    fn walk_stops_after_end_of_list() {
        let items = walk(&[1, 0, 2, 4, 5, 5]);
        assert_eq!(
            items,
            vec![Ok((0, TcpOption::Nop)), Ok((1, TcpOption::End))]
        );
    }

    #[test]
    fn zero_length_ends_walk_with_error_instead_of_looping() {
        let items = walk(&[1, 30, 0, 1]);
        assert_eq!(
            items,
            vec![
                Ok((0, TcpOption::Nop)),
                Err(OptionError::BadLength {
                    offset: 1,
                    kind: 30,
                    len: 0,
                    room: 3
                })
            ]
        );
    }

    #[test]
    fn overlong_option_ends_walk_with_error() {
        let items = walk(&[8, 10, 0, 0]);
        assert!(matches!(
            items[..],
            [Err(OptionError::BadLength { len: 10, .. })]
        ));
    }

    #[test]
    fn missing_length_byte_is_an_error() {
        assert_eq!(
            walk(&[1, 2]),
            vec![
                Ok((0, TcpOption::Nop)),
                Err(OptionError::MissingLength { offset: 1, kind: 2 })
            ]
        );
    }

    #[test]
    fn known_kind_with_wrong_length_is_an_error() {
        // A SACK option whose data is not a multiple of 8, then a valid SACK we must not reach.
        let bytes = [5, 7, 0, 0, 0, 0, 0, 5, 10, 0, 0, 0, 1, 0, 0, 0, 2];
        let items = walk(&bytes);
        assert_eq!(
            items,
            vec![Err(OptionError::WrongLength {
                offset: 0,
                kind: 5,
                len: 7
            })]
        );
        assert!(SackEdges::find(&bytes).offsets().is_empty());
    }

    #[test]
    fn sack_edges_before_a_broken_option_are_kept() {
        let bytes = [1, 5, 10, 0, 0, 0, 1, 0, 0, 0, 2, 99, 1];
        let edges = SackEdges::find(&bytes);
        assert_eq!(edges.offsets(), &[3, 7]);
        assert!(matches!(
            edges.error,
            Some(OptionError::BadLength { kind: 99, .. })
        ));
    }

    #[test]
    fn unknown_kinds_carry_their_data() {
        let items = walk(&[254, 4, 0xf9, 0x89]);
        assert_eq!(
            items,
            vec![Ok((
                0,
                TcpOption::Unknown {
                    kind: 254,
                    data: &[0xf9, 0x89]
                }
            ))]
        );
    }

    #[test]
    fn agrees_with_etherparse_on_well_formed_options() {
        use etherparse::TcpOptionElement as E;
        let bytes = [
            2, 4, 0x05, 0xb4, 1, 3, 3, 7, 4, 2, 8, 10, 0, 0, 0, 9, 0, 0, 0, 3, 1, 1, 5, 10, 0, 0,
            1, 0, 0, 0, 2, 0,
        ];
        let ours: Vec<_> = walk(&bytes).into_iter().map(|r| r.unwrap().1).collect();
        let theirs: Vec<_> = etherparse::TcpOptionsIterator::from_slice(&bytes)
            .map(|r| r.unwrap())
            .collect();
        let ours_mapped: Vec<_> = ours
            .iter()
            .filter_map(|o| match *o {
                TcpOption::Nop => Some(E::Noop),
                TcpOption::Mss(m) => Some(E::MaximumSegmentSize(m)),
                TcpOption::WindowScale(s) => Some(E::WindowScale(s)),
                TcpOption::SackPermitted => Some(E::SelectiveAcknowledgementPermitted),
                TcpOption::Timestamps { value, echo } => Some(E::Timestamp(value, echo)),
                TcpOption::Sack(b) => {
                    let v: Vec<_> = b.iter().collect();
                    Some(E::SelectiveAcknowledgement((v[0].0.0, v[0].1.0), [None; 3]))
                }
                TcpOption::End | TcpOption::Unknown { .. } => None,
            })
            .collect();
        assert_eq!(ours_mapped, theirs);
    }
}
