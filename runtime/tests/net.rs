//! The test guest's TCP server through virtio-net and a Linux tap: a namespace made by the
//! test holds the tap (10.0.0.1/24, no route out) and the client; the guest is 10.0.0.2.
//! Everything the test creates lives in that namespace and goes with it on every exit path.

mod common;

use colo_runtime::devices::virtio::net::DevicePhase;
use colo_runtime::net::netns::NetNs;
use colo_runtime::net::tap::{Tap, TapLink};
use colo_runtime::{ConsoleOutput, Machine, MachineConfig};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const GUEST: &str = "10.0.0.2:7000";

/// Sends each request line and reads one reply line for it, over one connection.
fn exchange(stream: &TcpStream, requests: &[&str]) -> Vec<String> {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    requests
        .iter()
        .map(|r| {
            writer.write_all(format!("{r}\n").as_bytes()).unwrap();
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            line.trim_end().to_string()
        })
        .collect()
}

fn connect(ns: &NetNs) -> TcpStream {
    ns.run(|| {
        let addr: SocketAddr = GUEST.parse().unwrap();
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(20))
            .expect("connecting to the guest");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream
    })
    .unwrap()
}

#[test]
fn guest_tcp_server_answers_a_real_client_over_a_tap() {
    if !common::kvm_available("guest_tcp_server_answers_a_real_client_over_a_tap")
        || !common::net_available("guest_tcp_server_answers_a_real_client_over_a_tap")
    {
        return;
    }
    let ns = NetNs::create(&common::unique_netns_name()).unwrap();
    let tap = ns.run(|| Tap::open("colotap0")).unwrap().unwrap();
    ns.ip(&["addr", "add", "10.0.0.1/24", "dev", "colotap0"])
        .unwrap();
    ns.ip(&["link", "set", "colotap0", "up"]).unwrap();

    let capture = colo_runtime::devices::console::OutputCapture::new();
    let mut machine = Machine::new(
        MachineConfig {
            mem_mib: 32,
            vcpus: 1,
        },
        ConsoleOutput::Capture(capture.clone()),
    )
    .unwrap();
    let cmdline = format!(
        "colo.workload=net-server colo.ip=10.0.0.2/24 colo.port=7000 colo.tsc_khz={}",
        machine.tsc_khz().unwrap()
    );
    machine
        .load_test_guest(&common::guest_image(), &cmdline)
        .unwrap();
    let link = TapLink::attach(tap, machine.net()).unwrap();
    machine.resume();
    let (text, up) = capture.wait_until(Duration::from_secs(20), |t| t.contains("net-server on"));
    assert!(up, "the guest did not start its server: {text}");

    let stream = connect(&ns);
    let replies = exchange(
        &stream,
        &[
            "1 SET a x",
            "2 SET a y",
            "3 GET a",
            "4 INCR n",
            "5 INCR n",
            "6 GET missing",
            "7 BOGUS",
        ],
    );
    assert_eq!(
        replies,
        [
            "1 OK 1",
            "2 OK 2",
            "3 VAL y 2",
            "4 VAL 1 1",
            "5 VAL 2 2",
            "6 NONE",
            "7 ERR"
        ]
    );
    drop(stream);

    // A second connection sees the history the first one wrote.
    let stream = connect(&ns);
    assert_eq!(
        exchange(&stream, &["8 INCR n", "9 GET a"]),
        ["8 VAL 3 3", "9 VAL y 2"]
    );
    drop(stream);

    machine.pause();
    let net = machine.net();
    let net = net.lock().unwrap();
    assert_eq!(net.phase(), DevicePhase::Live);
    let stats = net.stats();
    assert!(stats.rx_frames > 0 && stats.tx_frames > 0, "{stats:?}");
    assert_eq!(
        (stats.bad_chains, stats.device_errors),
        (0, 0),
        "the guest driver never handed the device a bad descriptor: {stats:?}"
    );
    eprintln!(
        "guest console: {}device counters: {stats:?}",
        capture.text()
    );
    drop(net);
    drop(link);
}
