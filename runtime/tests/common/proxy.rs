//! A loopback TCP proxy for link-drop tests: it forwards each connection to a backend and can
//! cut all open connections at once while both ends stay alive, like a broken cable or a reset
//! by a middlebox, then accepts the reconnection.

/// A loopback TCP proxy whose open connections can all be cut at once (a link drop with
/// both nodes alive); it keeps accepting afterwards.
pub struct Proxy {
    /// The address to connect to instead of the backend.
    pub front: String,
    open: std::sync::Arc<parking_lot::Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    /// Listens on a fresh loopback port and forwards every connection to `back`.
    pub fn start(back: String) -> Proxy {
        use std::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let front = listener.local_addr().unwrap().to_string();
        let open = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        let keep = open.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&back) else {
                    continue;
                };
                let mut guard = keep.lock();
                guard.push(client.try_clone().unwrap());
                guard.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { front, open }
    }

    /// Cuts every open connection (both directions); new ones are accepted as before.
    pub fn cut(&self) {
        for stream in self.open.lock().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}
