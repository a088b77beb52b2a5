//! What a node prints: its periodic report (guest step, frame and disk counters), the VM
//! milestones (`paused`, `applied`, with digests when asked) and one line per node event
//! (checkpoints, failover, handshake refusals), plus the loop's reactions that go with an
//! event (stop the VM when deposed or stopped, gate the console at takeover, claim the
//! client link).
//!
//! Invariant: every line starts with the node's role name and carries `key=value` fields that
//! tests and the demo read; nothing here feeds the node an input.

use super::{LoopEnd, NodeLoop};
use crate::layout::{GUEST_WORKSET_BASE, PAGE_SIZE};
use colo_core::checkpoint::VmCompletion;
use colo_core::node::{Event, NodeMode};
use colo_core::time::Instant;
use colo_core::wire::HelloRejectReason;
use vm_memory::{Bytes, GuestAddress};

impl NodeLoop {
    pub(super) fn report(&mut self, now: Instant) {
        let status = self.node.status(now);
        self.reports += 1;
        if !self.config.net.links.is_empty() && self.reports.is_multiple_of(4) {
            let f = self.net.stats();
            // The devices' counters, all NICs together.
            let (mut tx_frames, mut rx_frames, mut rx_dropped) = (0, 0, 0);
            for device in self.machine.nets() {
                let d = device.lock().expect("net mutex poisoned").stats();
                tx_frames += d.tx_frames;
                rx_frames += d.rx_frames;
                rx_dropped += d.rx_dropped;
            }
            let n = self.node.stats();
            println!(
                "{}: net to_guest={} to_client={} held_dropped={} client_dropped={} guest_tx={} guest_rx={} rx_dropped={} released={} held={} stale_secondary_output={}",
                self.name,
                f.to_guest,
                f.to_client,
                f.held_dropped,
                f.client_dropped,
                tx_frames,
                rx_frames,
                rx_dropped,
                n.released,
                n.held,
                n.stale_secondary_output
            );
        }
        if self.reports.is_multiple_of(4) {
            self.report_disk();
        }
        if self.config.workload_pages > 0
            && matches!(status.mode, NodeMode::Paired | NodeMode::Solo)
        {
            println!(
                "{}: guest-step step={} mode={:?} term={}",
                self.name,
                self.guest_step(),
                status.mode,
                status.term.0
            );
        }
    }

    /// The counter workload's step: word 0 of its last working-set page (the guest keeps
    /// every page's word 0 equal to the step it last completed).
    pub(super) fn guest_step(&self) -> u64 {
        if self.config.workload_pages == 0 {
            return 0;
        }
        let gpa = GUEST_WORKSET_BASE + (self.config.workload_pages - 1) * PAGE_SIZE;
        self.machine
            .memory()
            .read_obj::<u64>(GuestAddress(gpa))
            .unwrap_or(0)
    }

    pub(super) fn on_vm_done(&mut self, done: &VmCompletion) {
        match done {
            VmCompletion::DirtyCollected { epoch, ranges } => {
                // The PVM is paused here until the checkpoint completes: this is the state
                // the secondary will hold after applying `epoch`.
                let pages: u64 = ranges.iter().map(|r| r.count).sum();
                let digest = if self.config.digests {
                    format!(
                        " digest={:08x}{}",
                        self.machine.memory_digest(),
                        self.disk_digest()
                    )
                } else {
                    String::new()
                };
                println!(
                    "{}: paused epoch={} step={} dirty_pages={pages}{digest}",
                    self.name,
                    epoch.0,
                    self.guest_step()
                );
            }
            VmCompletion::Applied { epoch } => {
                // The SVM is the checkpoint now: what its guest printed since the last apply
                // was rolled back with it.
                let dropped = self.machine.output_gate().discard();
                let digest = if self.config.digests {
                    format!(" digest={:08x}", self.machine.memory_digest())
                } else {
                    String::new()
                };
                println!(
                    "{}: applied epoch={} step={} pages_copied={}{digest} apply_us={} console_dropped={dropped}",
                    self.name,
                    epoch.0,
                    self.guest_step(),
                    self.exec.last_apply.pages_copied,
                    self.exec.timings.apply.as_micros()
                );
            }
            _ => {}
        }
    }

    pub(super) fn on_node_event(&mut self, event: Event) {
        self.ctl_on_event(&event);
        let n = self.name;
        match &event {
            Event::CheckpointDone {
                epoch,
                reason,
                pause,
                pages,
                bytes,
            } => {
                self.exec.on_checkpoint_done(*epoch);
                let t = self.exec.timings;
                println!(
                    "{n}: checkpoint-done epoch={} reason={reason:?} pause_us={} pages={pages} bytes={bytes} step={} vm_pause_us={} vm_collect_us={} vm_send_us={} vm_save_us={} vm_resume_us={}",
                    epoch.0,
                    pause.as_micros(),
                    self.guest_step(),
                    t.pause.as_micros(),
                    t.collect.as_micros(),
                    t.send_pages.as_micros(),
                    t.save_devices.as_micros(),
                    t.resume.as_micros()
                );
            }
            Event::CheckpointApplied {
                epoch,
                pause,
                pages,
                bytes,
            } => println!(
                "{n}: checkpoint-applied epoch={} pause_us={} pages={pages} bytes={bytes} step={}",
                epoch.0,
                pause.as_micros(),
                self.guest_step()
            ),
            Event::PeerLost { silent_for } => {
                println!("{n}: peer-lost silent_ms={}", silent_for.as_millis())
            }
            Event::TakeoverStarted { term, from, reason } => println!(
                "{n}: takeover-started term={} from={from:?} reason={reason:?} step={}",
                term.0,
                self.guest_step()
            ),
            Event::FailedOver { term, reason } => {
                println!(
                    "{n}: failed-over term={} reason={reason:?} step={}",
                    term.0,
                    self.guest_step()
                );
                // The survivor's guest output is real from now on, starting with what it
                // printed since the last apply.
                let released = self.machine.output_gate().release();
                println!("{n}: console-released bytes={released}");
            }
            Event::Deposed { term, .. } => {
                println!("{n}: deposed term={} (stopping the VM)", term.0);
                self.machine.pause();
                self.end = Some(LoopEnd::Deposed);
            }
            Event::Stopped => {
                println!("{n}: stopped");
                self.machine.pause();
                self.end = Some(LoopEnd::Stopped);
            }
            Event::HandshakeRejected {
                reason: HelloRejectReason::VmMismatch { expected },
                by_peer: true,
            } => {
                let why = format!(
                    "the primary refused this node: its VM description (fingerprint {expected:016x}) differs from this node's ({:016x}); compare the `vm` lines both nodes print at start (memory, vCPUs, boot image, initrd, command line, disk sizes, MACs)",
                    self.config.node.vm_fingerprint
                );
                eprintln!("colo {n}: {why}");
                self.machine.pause();
                self.end = Some(LoopEnd::Refused(why));
            }
            Event::HandshakeRejected {
                reason: HelloRejectReason::VmMismatch { .. },
                by_peer: false,
            } => eprintln!(
                "colo {n}: refused a secondary whose VM description differs from this node's (fingerprint {:016x}); waiting for a matching one",
                self.config.node.vm_fingerprint
            ),
            Event::ProtocolError { kind, violation } => {
                eprintln!("colo {n}: protocol error: {kind:?}: {violation:?}")
            }
            Event::VmFailed { epoch, command } => {
                eprintln!("colo {n}: VM command {command:?} failed in {epoch:?}")
            }
            Event::Disk(disk_event) => self.on_disk_event(*disk_event),
            Event::ClaimClientLink { term } => println!(
                "{n}: claim-client-link term={} {}",
                term.0,
                self.net.claim_client_link()
            ),
            other => println!("{n}: event {other:?}"),
        }
    }
}
