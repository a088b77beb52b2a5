//! Criterion benchmark for the compare machine. (Being written: see issue 2.)

fn main() {}
