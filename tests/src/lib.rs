//! colo-tests: cross-crate tests (scenarios on the simulator, real KVM and tap end-to-end runs).
//! (Filled as those crates land.)
