//! Fuzz body for the `rewrite` target. (Being written: see issue 2.)

/// Runs one fuzz input.
pub fn run(data: &[u8]) {
    let _ = data;
}
