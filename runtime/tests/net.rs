//! The test guest's TCP server through virtio-net and a Linux tap: a namespace made by the
//! test holds the tap (10.0.0.1/24, no route out) and the client; the guest is 10.0.0.2.
//! Everything the test creates lives in that namespace and goes with it on every exit path.
//! The requests cover the store, the bulk requests (`STREAM`, `SINK`) and their ordering.

mod common;

use colo_runtime::net::kvclient::{KvConnection, Timeouts};
use colo_runtime::net::netns::NetNs;
use colo_runtime::net::tap::{Tap, TapLink};
use colo_runtime::vmm::devices::virtio::transport::DevicePhase;
use colo_runtime::{ConsoleOutput, Machine, MachineConfig};
use std::time::Duration;

const GUEST: &str = "10.0.0.2:7000";

/// Sends each request line and reads one reply line for it, over one connection.
fn exchange(conn: &mut KvConnection, requests: &[&str]) -> Vec<String> {
    requests.iter().map(|r| conn.ask(r).unwrap()).collect()
}

fn connect(ns: &NetNs) -> KvConnection {
    let timeouts = Timeouts {
        connect: Duration::from_secs(20),
        read: Duration::from_secs(20),
    };
    KvConnection::connect(ns, GUEST.parse().unwrap(), timeouts).expect("connecting to the guest")
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

    let capture = colo_runtime::vmm::devices::console::OutputCapture::new();
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

    let mut conn = connect(&ns);
    let replies = exchange(
        &mut conn,
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
    drop(conn);

    // A second connection sees the history the first one wrote.
    let mut conn = connect(&ns);
    assert_eq!(
        exchange(&mut conn, &["8 INCR n", "9 GET a"]),
        ["8 VAL 3 3", "9 VAL y 2"]
    );
    drop(conn);

    // Bulk both ways; a request sent right behind a STREAM is answered after its body, one
    // sent right behind a SINK's body is answered after the SUNK.
    let mut conn = connect(&ns);
    let n = 100_000u64;
    assert_eq!(
        conn.ask_with_body(&format!("10 STREAM {n}"), b"11 INCR n\n")
            .unwrap(),
        format!("10 STREAM {n}")
    );
    let mut body = Vec::new();
    conn.read_body(n, |c| body.extend_from_slice(c)).unwrap();
    let want: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
    assert!(body == want, "the STREAM body is the a..z pattern");
    assert_eq!(conn.reply().unwrap(), "11 VAL 4 4");
    let mut sink: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    sink.extend_from_slice(b"13 GET a\n");
    assert_eq!(
        conn.ask_with_body("12 SINK 70000", &sink).unwrap(),
        "12 SUNK 70000"
    );
    assert_eq!(conn.reply().unwrap(), "13 VAL y 2");
    assert_eq!(
        exchange(
            &mut conn,
            &["14 STREAM 99999999999", "15 SINK 0", "16 STREAM 0"]
        ),
        ["14 ERR", "15 SUNK 0", "16 STREAM 0"]
    );
    drop(conn);

    machine.pause();
    let net = machine.net();
    let net = net.lock();
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
