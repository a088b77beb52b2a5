//! Fuzz body for the `packet_parse` target. (Being written: see issue 2.)

/// Runs one fuzz input.
pub fn run(data: &[u8]) {
    let _ = data;
}
