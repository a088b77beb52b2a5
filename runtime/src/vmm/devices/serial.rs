//! The 16550 UART at COM1 (port 0x3f8, IRQ 4) for Linux guests, emulated by vm-superio; its
//! interrupt line is an eventfd registered as a KVM irqfd.
//!
//! Invariant: the UART's register state is saved and restored through vm-superio's own
//! `SerialState`, mirrored field by field into a serde struct (vm-superio 0.8 has no serde).

use super::bus::{BusDevice, DeviceAction};
use serde::{Deserialize, Serialize};
use std::io::Write;
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// COM1's I/O port base.
pub const COM1_BASE: u16 = 0x3f8;
/// COM1's ISA interrupt line.
pub const COM1_IRQ: u32 = 4;

/// vm-superio's interrupt hook: writing the eventfd raises the irqfd's GSI.
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The serial device.
pub struct SerialPort {
    uart: Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>,
}

impl std::fmt::Debug for SerialPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialPort").finish_non_exhaustive()
    }
}

/// The UART's Persist state (mirror of vm-superio's `SerialState`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialPortState {
    /// Divisor latch low.
    pub baud_divisor_low: u8,
    /// Divisor latch high.
    pub baud_divisor_high: u8,
    /// Interrupt enable register.
    pub interrupt_enable: u8,
    /// Interrupt identification register.
    pub interrupt_identification: u8,
    /// Line control register.
    pub line_control: u8,
    /// Line status register.
    pub line_status: u8,
    /// Modem control register.
    pub modem_control: u8,
    /// Modem status register.
    pub modem_status: u8,
    /// Scratch register.
    pub scratch: u8,
    /// Bytes waiting in the receive FIFO.
    pub in_buffer: Vec<u8>,
}

impl SerialPort {
    /// A UART raising `irq` and writing to `out`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> SerialPort {
        SerialPort {
            uart: Serial::new(EventFdTrigger(irq), out),
        }
    }

    /// Persist: the register state.
    pub fn save(&self) -> SerialPortState {
        let s = self.uart.state();
        SerialPortState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }

    /// Persist: a UART in the saved state, raising `irq` and writing to `out`.
    pub fn restore(
        irq: EventFd,
        out: Box<dyn Write + Send>,
        state: &SerialPortState,
    ) -> Result<SerialPort, vm_superio::serial::Error<std::io::Error>> {
        let s = SerialState {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer.clone(),
        };
        Ok(SerialPort {
            uart: Serial::from_state(&s, EventFdTrigger(irq), NoEvents, out)?,
        })
    }
}

impl BusDevice for SerialPort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let Some(first) = data.first_mut() {
            *first = self.uart.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        if let Some(&byte) = data.first() {
            // A failed output write or interrupt trigger is not the guest's fault; the byte
            // is lost like on a disconnected line.
            let _ = self.uart.write(offset as u8, byte);
        }
        DeviceAction::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::devices::console::OutputCapture;

    #[test]
    fn transmitted_bytes_reach_the_output_and_state_round_trips() {
        let cap = OutputCapture::new();
        let mut port = SerialPort::new(EventFd::new(0).unwrap(), cap.writer());
        port.write(3, &[0x80]); // DLAB on
        port.write(0, &[0x0c]); // divisor low
        port.write(3, &[0x03]); // DLAB off, 8n1
        port.write(0, b"A");
        port.write(0, b"\n");
        assert_eq!(cap.text(), "A\n");
        let state = port.save();
        assert_eq!(state.baud_divisor_low, 0x0c);
        let restored = SerialPort::restore(EventFd::new(0).unwrap(), cap.writer(), &state).unwrap();
        assert_eq!(restored.save(), state);
    }
}
