//! colo-sim: the deterministic simulator. It will drive the same `colo_core` machines under
//! madsim with a seeded network emulator, simulated guests, fault injection and invariant
//! checkers. (Being written: see issue 4.)
