//! The node loop's side of the control socket and of re-protection: answers [`ControlCall`]s
//! from the node's own state (the loop owns the `Node`; the control thread only posts; the
//! re-protection arming and the checkpoint interval are the node's), keeps what the status
//! reports beyond it (the last checkpoint), binds a secondary's newcomer acceptor, and arms
//! re-protection whenever the node enters Solo if `--auto-reprotect` asked for it.
//!
//! Invariants: a command's answer says whether the node took it (the node answers a refused
//! command with `Event::CommandRefused` and its reason; the loop checks no precondition of its
//! own beyond its own configuration) and is sent before the next input, except
//! `checkpoint`'s, which is sent when a checkpoint after the request completes, or as an error
//! as soon as the node stops being paired (the control thread's reply timeout bounds the
//! rest); re-protection is armed only on a node that can accept a newcomer (whether a
//! connection is used is the node's `LinkCommand::Accept`, executed in `link.rs`).
//!
//! Topology (docs/operations.md "Re-protection"): the survivor is always the new primary and
//! the newcomer always connects to it. A primary accepts on its `--listen` address for its
//! whole life; a secondary accepts on its own `--listen` address only once it runs solo.

use super::{LoopEvent, NodeLoop};
use crate::pair::control::{
    Answer, Auth, CheckpointAnswer, ControlCall, LastCheckpoint as LastCheckpointAnswer, Peer,
    Reprotect, Request, Response, Status, error_response,
};
use crate::pair::events::Milestone;
use colo_core::checkpoint::CheckpointEvent;
use colo_core::ids::Role;
use colo_core::node::{Command, CommandRefusal, Event, Input, NodeMode};
use colo_core::time::{Duration, Instant};
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc;
use tracing::info;

/// The last checkpoint this node completed (primary side) or applied (secondary side).
#[derive(Clone, Copy, Debug)]
pub(super) struct LastCheckpoint {
    epoch: u64,
    pause_us: u64,
    bytes: u64,
    at: Instant,
}

/// What the loop keeps for the operator.
#[derive(Debug)]
pub(super) struct LoopControl {
    /// The bound control socket (removed when the loop ends).
    pub(super) server: Option<crate::pair::control::ControlServer>,
    last_checkpoint: Option<LastCheckpoint>,
    /// Re-arm whenever the node enters Solo.
    auto: bool,
    /// Where newcomers connect (the primary's `--listen`, the secondary's takeover `--listen`).
    newcomers: Option<SocketAddr>,
    last_mode: NodeMode,
    /// `checkpoint` requests waiting for a checkpoint after this epoch to complete.
    waiting: Vec<(mpsc::Sender<Response>, u64)>,
    /// The node's answer to the command being run, if it refused it.
    refused: Option<CommandRefusal>,
}

impl LoopControl {
    pub(super) fn new(auto: bool, newcomers: Option<SocketAddr>) -> Self {
        LoopControl {
            server: None,
            last_checkpoint: None,
            auto,
            newcomers,
            last_mode: NodeMode::Idle,
            waiting: Vec::new(),
            refused: None,
        }
    }
}

/// Accepts newcomers for a secondary that may become a survivor; the node decides whether the
/// loop uses each connection (`LinkCommand::Accept`, executed in `link.rs`).
pub(super) fn spawn_newcomer_acceptor(
    addr: SocketAddr,
    key: crate::pair::peer::auth::PairKey,
    name: &'static str,
    tx: mpsc::Sender<LoopEvent>,
) -> Result<(), String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    std::thread::Builder::new()
        .name("colo-newcomer-accept".to_string())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let tx = tx.clone();
                crate::pair::peer::auth::spawn_accept(stream, &key, name, move |link| {
                    let _ = tx.send(LoopEvent::Newcomer(link));
                });
            }
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start the newcomer acceptor: {e}"))
}

impl NodeLoop {
    /// Answers one operator request.
    pub(super) fn on_control(&mut self, call: ControlCall) {
        let response = match call.request {
            Request::Status => Response::Status(Box::new(self.status())),
            Request::Checkpoint => match self.control_checkpoint() {
                Ok(after) => {
                    // Answered when a checkpoint after `after` completes (ctl_on_event).
                    self.ctl.waiting.push((call.reply, after));
                    return;
                }
                Err(response) => response,
            },
            Request::Failover => self.control_failover(),
            Request::SetCheckpointInterval { ms } => self.control_interval(ms),
            Request::Reprotect => self.control_reprotect(),
            Request::SetDigests { on } => {
                self.config.digests = on;
                let state = if on { "on" } else { "off" };
                Response::Done(Answer::message(format!("checkpoint digests {state}")))
            }
            Request::Shutdown => {
                self.input(Input::Command(Command::Shutdown));
                Response::Done(Answer::message("shutting down: goodbye sent to the peer"))
            }
        };
        let _ = call.reply.send(response);
    }

    /// Runs `command`; `Err` with the node's reason when it refused it.
    fn run_command(&mut self, command: Command) -> Result<(), CommandRefusal> {
        self.ctl.refused = None;
        self.input(Input::Command(command));
        self.ctl.refused.take().map_or(Ok(()), Err)
    }

    /// The operator's answer to a refused command: the node's reason and where it stands.
    fn refusal(&self, why: CommandRefusal) -> Response {
        let (mode, role) = self.mode_role();
        error_response(&format!("{why}; this node is {role:?} in mode {mode:?}"))
    }

    fn mode_role(&self) -> (NodeMode, Role) {
        let status = self.node.status(self.clock.now());
        (status.mode, status.role)
    }

    /// Triggers a checkpoint; `Ok(epoch)`: answer once a checkpoint after `epoch` completes.
    /// A trigger while one is in progress is coalesced into it (QEMU does the same with a
    /// checkpoint request during a checkpoint): that one answers, with its own reason.
    fn control_checkpoint(&mut self) -> Result<u64, Response> {
        let epoch = self.node.status(self.clock.now()).epoch.0;
        match self.run_command(Command::ForceCheckpoint) {
            Ok(()) => Ok(epoch),
            Err(why) => Err(self.refusal(why)),
        }
    }

    fn control_failover(&mut self) -> Response {
        if let Err(why) = self.run_command(Command::Failover) {
            return self.refusal(why);
        }
        let (mode, role) = self.mode_role();
        Response::Done(Answer {
            mode: Some(format!("{mode:?}")),
            ..Answer::message(format!("failover started: now {role:?} in mode {mode:?}"))
        })
    }

    fn control_interval(&mut self, ms: u64) -> Response {
        match self.run_command(Command::SetCheckpointInterval(Duration::from_millis(ms))) {
            Ok(()) => Response::Done(Answer {
                checkpoint_interval_ms: Some(ms),
                ..Answer::message(format!("checkpoint interval set to {ms} ms"))
            }),
            Err(why) => self.refusal(why),
        }
    }

    fn control_reprotect(&mut self) -> Response {
        let Some(addr) = self.ctl.newcomers else {
            return error_response(
                "this node accepts no newcomers: start the secondary with --listen ADDR",
            );
        };
        if let Err(why) = self.run_command(Command::Reprotect) {
            return self.refusal(why);
        }
        info!(role = self.name, listen = %addr, "reprotect-armed");
        self.milestone(Milestone::ReprotectArmed {
            listen: addr.to_string(),
            auto: false,
        });
        Response::Done(Answer {
            listen: Some(addr.to_string()),
            ..Answer::message(format!(
                "re-protection armed: start `colo secondary --peer {addr}`"
            ))
        })
    }

    fn status(&self) -> Status {
        let now = self.clock.now();
        let st = self.node.status(now);
        let stats = self.node.stats();
        let auth = self.config.key.counts();
        let last_checkpoint = self.ctl.last_checkpoint.map(|c| LastCheckpointAnswer {
            epoch: c.epoch,
            pause_us: c.pause_us,
            bytes: c.bytes,
            ago_ms: now.saturating_duration_since(c.at).as_millis() as u64,
        });
        let stats = [
            ("peer_received", stats.peer_received),
            ("peer_sent", stats.peer_sent),
            ("protocol_errors", stats.protocol_errors),
            ("stale_messages", stats.stale_messages),
            ("stale_secondary_output", stats.stale_secondary_output),
            ("ignored_before_start", stats.ignored_before_start),
            ("ignored_after_stop", stats.ignored_after_stop),
            ("commands_ignored", stats.commands_ignored),
            (
                "client_frames_on_secondary",
                stats.client_frames_on_secondary,
            ),
            ("released", stats.released),
            ("held", stats.held),
            ("held_over_bound", stats.held_over_bound),
            ("fenced_frames", stats.fenced_frames),
            ("takeovers_refused", stats.takeovers_refused),
            ("sends_suppressed", stats.sends_suppressed),
            ("hellos_ignored", stats.hellos_ignored),
            ("stray_vm_completions", stats.stray_vm_completions),
            ("dropped_while_down", self.dropped_while_down),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect();
        Status {
            process: self.name.to_string(),
            node_id: self.config.node.node_id.0,
            role: format!("{:?}", st.role),
            mode: format!("{:?}", st.mode),
            term: st.term.0,
            epoch: st.epoch.0,
            last_checkpoint,
            peer: Peer {
                peer_id: st.peer_id.map(|p| p.0),
                link: if self.writer.is_some() { "up" } else { "down" }.to_string(),
                heartbeat: st.peer.map(|p| format!("{p:?}")),
            },
            lease_held: st.lease_held,
            last_failover_reason: st.last_failover_reason.map(|r| format!("{r:?}")),
            guest_step: self.guest_step(),
            digests: self.config.digests,
            checkpoint_interval_ms: self.node.checkpoint_interval().as_millis() as u64,
            reprotect: Reprotect {
                armed: self.node.reprotect_armed(),
                auto: self.ctl.auto,
                listen: self.ctl.newcomers.map(|a| a.to_string()),
            },
            stats,
            auth: Some(Auth {
                refused_links: auth.refused_links,
                bad_frames: auth.bad_frames,
            }),
        }
    }

    /// Keeps the control state in step with the node's events.
    pub(super) fn ctl_on_event(&mut self, event: &Event) {
        if let Event::CommandRefused { why, .. } = event {
            self.ctl.refused = Some(*why);
            return;
        }
        if let Event::Checkpoint(CheckpointEvent::CheckpointDone {
            epoch,
            reason,
            pause,
            pages,
            bytes,
        }) = event
        {
            let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.ctl.waiting)
                .into_iter()
                .partition(|(_, after)| epoch.0 > *after);
            self.ctl.waiting = waiting;
            for (reply, _) in done {
                let _ = reply.send(Response::Checkpoint(CheckpointAnswer {
                    message: format!(
                        "checkpoint {} done ({reason:?}): PVM pause {} us, {pages} pages, {bytes} bytes",
                        epoch.0,
                        pause.as_micros()
                    ),
                    epoch: epoch.0,
                    reason: format!("{reason:?}"),
                    pause_us: pause.as_micros() as u64,
                    pages: *pages,
                    bytes: *bytes,
                }));
            }
        }
        let (epoch, pause, bytes) = match event {
            Event::Checkpoint(CheckpointEvent::CheckpointDone {
                epoch,
                pause,
                bytes,
                ..
            })
            | Event::Checkpoint(CheckpointEvent::CheckpointApplied {
                epoch,
                pause,
                bytes,
                ..
            }) => (epoch.0, pause.as_micros() as u64, *bytes),
            _ => return,
        };
        self.ctl.last_checkpoint = Some(LastCheckpoint {
            epoch,
            pause_us: pause,
            bytes,
            at: self.clock.now(),
        });
    }

    /// After every input: with `--auto-reprotect` a node entering Solo arms itself (whether
    /// it is armed is the node's state, `Node::reprotect_armed`).
    pub(super) fn ctl_after_input(&mut self) {
        let (mode, _) = self.mode_role();
        let entered = mode != self.ctl.last_mode;
        self.ctl.last_mode = mode;
        if mode != NodeMode::Paired {
            for (reply, _) in self.ctl.waiting.drain(..) {
                let _ = reply.send(error_response(&format!(
                    "the pair ended before the checkpoint completed (mode {mode:?})"
                )));
            }
        }
        if mode == NodeMode::Solo
            && entered
            && self.ctl.auto
            && !self.node.reprotect_armed()
            && self.ctl.newcomers.is_some()
            && self.run_command(Command::Reprotect).is_ok()
        {
            let listen = self
                .ctl
                .newcomers
                .map(|a| a.to_string())
                .unwrap_or_default();
            info!(
                role = self.name,
                listen = listen.as_str(),
                auto = true,
                "reprotect-armed"
            );
            self.milestone(Milestone::ReprotectArmed { listen, auto: true });
        }
    }
}
