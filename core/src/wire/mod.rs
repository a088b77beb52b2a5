//! The versioned peer protocol and its framing codec. (Being written: see issue 2.)
