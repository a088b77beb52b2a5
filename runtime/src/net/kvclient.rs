//! The client side of the test guest's key-value server (`colo.workload=net-server`), shared
//! by the network tests and `colo demo --net`: the bridge a replicated pair's client taps
//! hang on, and one line-protocol connection (a request line out, one reply line back).
//!
//! Invariant: a connection reads through one buffered reader for its whole life, so bytes
//! of a reply that arrive together with the next one are never dropped between requests.

use super::netns::NetNs;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The bridge's fixed MAC. A bridge without one takes its lowest port's, so it would change
/// when the primary's tap disappears, and the guest's next frames to the client (sent to the
/// old MAC) would be lost until the guest re-ARPs.
pub const BRIDGE_MAC: &str = "02:c0:10:00:00:01";

/// Creates bridge `name` in `ns` with [`BRIDGE_MAC`], forwarding at once (`forward_delay
/// 0`), address `cidr` (the client's side, no route out), and brings it up.
pub fn add_client_bridge(ns: &NetNs, name: &str, cidr: &str) -> io::Result<()> {
    ns.ip(&[
        "link",
        "add",
        name,
        "address",
        BRIDGE_MAC,
        "type",
        "bridge",
        "forward_delay",
        "0",
    ])?;
    ns.ip(&["addr", "add", cidr, "dev", name])?;
    ns.ip(&["link", "set", name, "up"])
}

/// How long a client waits to connect and for each reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// One reply line.
    pub read: Duration,
}

/// One TCP connection to the guest's server, made from inside a namespace.
#[derive(Debug)]
pub struct KvConnection {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl KvConnection {
    /// Connects from inside `ns` to `addr`, with Nagle off (one small request at a time:
    /// waiting to coalesce would only add latency to every request).
    pub fn connect(ns: &NetNs, addr: SocketAddr, timeouts: Timeouts) -> Result<Self, String> {
        let stream = ns
            .run(move || TcpStream::connect_timeout(&addr, timeouts.connect))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot connect to the guest at {addr}: {e}"))?;
        stream
            .set_read_timeout(Some(timeouts.read))
            .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
        Ok(KvConnection { stream, reader })
    }

    /// Sends `request` as one line and returns the reply line without its line end (empty
    /// when the server closed the connection).
    pub fn ask(&mut self, request: &str) -> Result<String, String> {
        self.stream
            .write_all(format!("{request}\n").as_bytes())
            .map_err(|e| format!("request {request:?}: {e}"))?;
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .map_err(|e| format!("reply to request {request:?}: {e}"))?;
        Ok(line.trim_end().to_string())
    }

    /// Sends `request` as one line followed by `body` (a `SINK` request) and returns the reply
    /// line without its line end.
    pub fn ask_with_body(&mut self, request: &str, body: &[u8]) -> Result<String, String> {
        self.stream
            .write_all(format!("{request}\n").as_bytes())
            .and_then(|()| self.stream.write_all(body))
            .map_err(|e| format!("request {request:?}: {e}"))?;
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .map_err(|e| format!("reply to request {request:?}: {e}"))?;
        Ok(line.trim_end().to_string())
    }

    /// Reads the next reply line without its line end (for requests sent ahead, e.g. in the
    /// body of [`KvConnection::ask_with_body`]).
    pub fn reply(&mut self) -> Result<String, String> {
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .map_err(|e| format!("reply: {e}"))?;
        Ok(line.trim_end().to_string())
    }

    /// Reads exactly `n` bytes that follow a reply line (a `STREAM` body), handing each chunk
    /// to `chunk` as it arrives.
    pub fn read_body(&mut self, n: u64, mut chunk: impl FnMut(&[u8])) -> Result<(), String> {
        let mut left = n;
        while left > 0 {
            let buf = self
                .reader
                .fill_buf()
                .map_err(|e| format!("body: {e} with {left} of {n} bytes still to come"))?;
            if buf.is_empty() {
                return Err(format!(
                    "body: connection closed with {left} of {n} bytes still to come"
                ));
            }
            let take = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            chunk(&buf[..take]);
            self.reader.consume(take);
            left -= take as u64;
        }
        Ok(())
    }

    /// The socket, e.g. to clone it and shut it down from another thread.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }
}
