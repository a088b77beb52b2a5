//! `Lan`: the Ethernet switch of the simulated world — which endpoint a frame is addressed to.
//!
//! It owns the MAC-to-endpoint table and keeps one invariant: a unicast frame goes to exactly
//! the endpoint owning its destination MAC (or nowhere), a broadcast or multicast frame (ARP
//! requests) to every other endpoint, in table order, so routing adds no nondeterminism. The
//! frames then travel through [`crate::netem::Netem`], one `send` per destination.

use std::collections::BTreeMap;

/// MAC address table of a switched LAN.
#[derive(Clone, Debug, Default)]
pub struct Lan<E> {
    ports: BTreeMap<[u8; 6], E>,
}

impl<E: Clone + PartialEq> Lan<E> {
    /// An empty switch.
    pub fn new() -> Lan<E> {
        Lan {
            ports: BTreeMap::new(),
        }
    }

    /// Attaches `endpoint` with address `mac` (replacing a previous owner: a failover moves
    /// the guest's MAC to the other host).
    pub fn attach(&mut self, mac: [u8; 6], endpoint: E) {
        self.ports.insert(mac, endpoint);
    }

    /// The endpoints a frame sent by `from` must reach (none for a runt frame).
    pub fn destinations(&self, from: &E, frame: &[u8]) -> Vec<E> {
        let Some(dst) = frame.get(..6) else {
            return Vec::new();
        };
        if dst[0] & 1 == 1 {
            // Group bit set (IEEE 802.3 clause 3.2.3): broadcast or multicast, flood.
            let mut out: Vec<E> = Vec::new();
            for e in self.ports.values() {
                if e != from && !out.contains(e) {
                    out.push(e.clone());
                }
            }
            return out;
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(dst);
        self.ports
            .get(&mac)
            .filter(|e| *e != from)
            .cloned()
            .into_iter()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unicast_goes_to_owner_and_broadcast_floods_others() {
        let mut lan = Lan::new();
        lan.attach([2, 0, 0, 0, 0, 1], "guest");
        lan.attach([2, 0, 0, 0, 0, 2], "client");
        lan.attach([2, 0, 0, 0, 0, 3], "upstream");
        let mut frame = vec![2, 0, 0, 0, 0, 1];
        frame.extend_from_slice(&[0; 8]);
        assert_eq!(lan.destinations(&"client", &frame), vec!["guest"]);
        frame[..6].copy_from_slice(&[0xff; 6]);
        assert_eq!(
            lan.destinations(&"client", &frame),
            vec!["guest", "upstream"]
        );
        frame[..6].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        assert!(lan.destinations(&"client", &frame).is_empty());
        assert!(lan.destinations(&"client", &[1, 2]).is_empty());
    }
}
