//! The primary-side comparator. (Being written: see issue 2.)
