//! The fake guest: an idempotent UDP request/response server. Request `k` is answered with
//! `k`; its state is the highest request seen (so consuming a request twice changes nothing,
//! like TCP ignoring a duplicate segment). A test can make it diverge (the SVM's answers to
//! every `n`th request differ by one byte) to provoke miscompares.

use colo_core::compare::testkit::{Headers, udp};
use std::collections::VecDeque;

const REQ: &[u8; 4] = b"REQ:";
const RSP: &[u8; 4] = b"RSP:";

/// A client request frame for request `k`.
pub fn request(k: u64) -> Vec<u8> {
    let mut payload = REQ.to_vec();
    payload.extend_from_slice(&k.to_be_bytes());
    let h = Headers {
        src_port: 5000,
        dst_port: 80,
        ..Headers::default()
    };
    udp(&h, &payload)
}

fn payload_after(frame: &[u8], tag: &[u8; 4]) -> Option<u64> {
    // The UDP payload is the frame's tail: tag + 8 bytes (+ 1 divergence byte for answers).
    let pos = frame.windows(4).rposition(|w| w == tag)?;
    let bytes: [u8; 8] = frame.get(pos + 4..pos + 12)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// The request number an answer frame answers.
pub fn answer_of(frame: &[u8]) -> Option<u64> {
    payload_after(frame, RSP)
}

#[derive(Clone, Debug)]
pub struct Guest {
    pub state: u64,
    pub paused: bool,
    inbox: VecDeque<Vec<u8>>,
    /// Answer every `n`th request with a different byte (SVM divergence).
    pub diverge_every: Option<u64>,
}

impl Guest {
    pub fn new() -> Guest {
        // VMs are created paused; the first checkpoint starts them.
        Guest {
            state: 0,
            paused: true,
            inbox: VecDeque::new(),
            diverge_every: None,
        }
    }

    pub fn deliver(&mut self, frame: Vec<u8>) {
        self.inbox.push_back(frame);
    }

    /// Consumes the inbox; returns `(request, answer frame)` pairs.
    pub fn run(&mut self) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(f) = self.inbox.pop_front() {
            let Some(k) = payload_after(&f, REQ) else {
                continue;
            };
            self.state = self.state.max(k);
            let mut payload = RSP.to_vec();
            payload.extend_from_slice(&k.to_be_bytes());
            let odd = self.diverge_every.is_some_and(|n| n > 0 && k % n == 0);
            payload.push(u8::from(odd));
            let h = Headers {
                src_port: 80,
                dst_port: 5000,
                ..Headers::default()
            };
            out.push((k, udp(&h, &payload)));
        }
        out
    }
}
