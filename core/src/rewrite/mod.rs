//! The secondary-side TCP rewriter. (Being written: see issue 2.)
