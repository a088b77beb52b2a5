//! Zero pages on the wire: the map a page-carrying frame ([`super::Message::PageBatch`],
//! [`super::Message::SyncPages`]) uses to say which of its pages are all-zero and therefore not
//! in its bulk, and the scan a sender uses to find them.
//!
//! A mostly-empty guest is mostly zero pages: its full copy (the initial copy and every
//! re-protection) would otherwise put megabytes of zeros on the link. A frame covering `n`
//! pages (its ranges, in order) carries a [`ZeroPages`] map of exactly `ceil(n / 8)` bytes:
//! bit `i % 8` (least significant first) of byte `i / 8` is set when page `i` of the frame is
//! all-zero. Its bulk holds only the other pages, [`super::PAGE_SIZE`] bytes each, in order;
//! the receiver writes zeros for the marked ones.
//!
//! Invariant: a map accepted by [`ZeroPages::check`] has exactly one encoding for its frame
//! (the length is fixed by the page count and no bit past the last page may be set), so the
//! frame layout's "one valid encoding" rule holds and the bulk length follows from the ranges
//! and the map alone.

use serde::{Deserialize, Serialize};

/// Which pages of a page-carrying frame are all-zero and left out of its bulk (see the module
/// doc for the bit order).
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ZeroPages(Vec<u8>);

/// Why a zero map does not fit its frame's page count.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ZeroMapFault {
    /// The map's length is not `ceil(pages / 8)` bytes.
    Length {
        /// The map's length in bytes.
        map_bytes: u64,
        /// The length the frame's page count needs.
        expected_bytes: u64,
    },
    /// A bit past the frame's last page is set.
    StrayBit {
        /// The set bit's page index.
        index: u64,
    },
}

impl core::fmt::Display for ZeroMapFault {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ZeroMapFault::Length {
                map_bytes,
                expected_bytes,
            } => write!(
                f,
                "the map has {map_bytes} bytes, the pages need {expected_bytes}"
            ),
            ZeroMapFault::StrayBit { index } => {
                write!(f, "bit {index}, past the last page, is set")
            }
        }
    }
}

impl ZeroPages {
    /// The map of `pages` pages, none of them zero.
    pub fn none(pages: u64) -> ZeroPages {
        ZeroPages(vec![0; map_len(pages)])
    }

    /// The map whose page `i` is zero when the `i`-th flag is `true`.
    pub fn from_flags(flags: impl IntoIterator<Item = bool>) -> ZeroPages {
        let mut bytes = Vec::new();
        for (i, zero) in flags.into_iter().enumerate() {
            if i % 8 == 0 {
                bytes.push(0);
            }
            if zero && let Some(last) = bytes.last_mut() {
                *last |= 1 << (i % 8);
            }
        }
        ZeroPages(bytes)
    }

    /// The map as its raw bytes (the wire form, without the length prefix).
    pub fn from_bytes(bytes: Vec<u8>) -> ZeroPages {
        ZeroPages(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether page `index` of the frame is zero (an index past the map is not).
    pub fn is_zero(&self, index: u64) -> bool {
        usize::try_from(index / 8)
            .ok()
            .and_then(|byte| self.0.get(byte))
            .is_some_and(|b| b & (1 << (index % 8)) != 0)
    }

    /// How many pages the map marks zero.
    pub fn count(&self) -> u64 {
        self.0.iter().map(|b| u64::from(b.count_ones())).sum()
    }

    /// Checks the map against its frame's page count; returns how many pages it marks zero.
    pub fn check(&self, pages: u64) -> Result<u64, ZeroMapFault> {
        let expected_bytes = pages.div_ceil(8);
        if self.0.len() as u64 != expected_bytes {
            return Err(ZeroMapFault::Length {
                map_bytes: self.0.len() as u64,
                expected_bytes,
            });
        }
        if !pages.is_multiple_of(8)
            && let Some(&last) = self.0.last()
        {
            let used = pages % 8;
            let stray = last >> used;
            if stray != 0 {
                return Err(ZeroMapFault::StrayBit {
                    index: pages + u64::from(stray.trailing_zeros()),
                });
            }
        }
        Ok(self.count())
    }
}

fn map_len(pages: u64) -> usize {
    usize::try_from(pages.div_ceil(8)).unwrap_or(usize::MAX)
}

/// A page of zeros to compare against.
static ZERO_PAGE: [u8; 4096] = [0; 4096];

/// Whether `page` (any length) is all zero bytes. Compares it block by block with a page of
/// zeros: slice equality of bytes is one `memcmp`, which stops at the first differing block (a
/// page with data costs a few words) and is the C library's vectorised one even in a debug
/// build (a word loop in Rust would be ~50x slower there, enough to stall a debug node's link
/// thread for the length of a heartbeat on a 32 MiB copy).
pub fn is_zero_page(page: &[u8]) -> bool {
    page.chunks(ZERO_PAGE.len())
        .all(|block| block == &ZERO_PAGE[..block.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_set_the_bits_in_page_order_least_significant_first() {
        let map =
            ZeroPages::from_flags([true, false, false, true, false, false, false, false, true]);
        assert_eq!(map.as_bytes(), &[0b0000_1001, 0b0000_0001]);
        assert!(map.is_zero(0) && map.is_zero(3) && map.is_zero(8));
        assert!(!map.is_zero(1) && !map.is_zero(9) && !map.is_zero(u64::MAX));
        assert_eq!(map.count(), 3);
        assert_eq!(map.check(9), Ok(3));
    }

    #[test]
    fn a_map_of_the_wrong_length_is_refused() {
        let map = ZeroPages::none(16);
        assert_eq!(
            map.check(17),
            Err(ZeroMapFault::Length {
                map_bytes: 2,
                expected_bytes: 3
            })
        );
        assert_eq!(
            map.check(8),
            Err(ZeroMapFault::Length {
                map_bytes: 2,
                expected_bytes: 1
            })
        );
        assert_eq!(ZeroPages::none(0).check(0), Ok(0));
        assert!(ZeroPages::none(3).check(u64::MAX).is_err());
    }

    #[test]
    fn a_bit_past_the_last_page_is_refused() {
        let map = ZeroPages::from_bytes(vec![0, 0b0100_0001]);
        assert_eq!(map.check(16), Ok(2));
        assert_eq!(map.check(14), Err(ZeroMapFault::StrayBit { index: 14 }));
        assert_eq!(map.check(9), Err(ZeroMapFault::StrayBit { index: 14 }));
    }

    #[test]
    fn the_scan_finds_any_non_zero_byte() {
        let mut page = vec![0u8; 4096];
        assert!(is_zero_page(&page));
        for at in [0, 7, 63, 64, 2048, 4095] {
            page[at] = 1;
            assert!(!is_zero_page(&page), "byte {at}");
            page[at] = 0;
        }
        let mut odd = vec![0u8; 100];
        assert!(is_zero_page(&odd));
        odd[99] = 0x80;
        assert!(!is_zero_page(&odd));
        assert!(is_zero_page(&[]));
        // Longer than one compared block: the last byte of the third block counts.
        let mut long = vec![0u8; 3 * 4096 + 10];
        assert!(is_zero_page(&long));
        long[3 * 4096 + 9] = 2;
        assert!(!is_zero_page(&long));
    }
}
