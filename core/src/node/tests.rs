//! Unit tests of the node alone (the two-node scenarios live in `core/tests/pair/`).
