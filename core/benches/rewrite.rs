//! Criterion benchmark for the rewrite machine. (Being written: see issue 2.)

fn main() {}
