//! The one output queue every state machine of the core uses (the node, the checkpointers,
//! the comparator, the disk router): outputs come out in the order the machine pushed them
//! (FIFO), because that order is part of the protocol (a `Send` before the `Vm` command that
//! follows it, a checkpoint's frames in sequence).
//!
//! Invariant kept: nothing is reordered or dropped; a caller drains it with [`Outbox::pop`]
//! until `None`.

use std::collections::VecDeque;

/// A FIFO of a machine's outputs, drained by its caller.
#[derive(Clone, Debug)]
pub(crate) struct Outbox<T>(VecDeque<T>);

impl<T> Default for Outbox<T> {
    fn default() -> Self {
        Outbox(VecDeque::new())
    }
}

impl<T> Outbox<T> {
    /// An empty outbox with room for `capacity` outputs before it grows (a hot path's queue
    /// allocates once).
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Outbox(VecDeque::with_capacity(capacity))
    }

    /// Queues `output` after everything queued before it.
    pub(crate) fn push(&mut self, output: T) {
        self.0.push_back(output);
    }

    /// The oldest output, if any.
    pub(crate) fn pop(&mut self) -> Option<T> {
        self.0.pop_front()
    }

    /// Whether nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::Outbox;

    #[test]
    fn outputs_come_out_in_the_order_they_were_pushed() {
        let mut out = Outbox::default();
        for i in 0..5 {
            out.push(i);
        }
        assert!(!out.is_empty());
        let drained: Vec<i32> = std::iter::from_fn(|| out.pop()).collect();
        assert_eq!(drained, vec![0, 1, 2, 3, 4]);
        assert!(out.is_empty());
    }
}
