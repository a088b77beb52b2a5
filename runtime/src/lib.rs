//! colo-runtime: the real runtime. It will bind `colo-core` to KVM (the VMM), tap devices,
//! disk files and the peer transport, and provide the `colo` command-line tool.
//! (Being written: see issues 5 and later.)
