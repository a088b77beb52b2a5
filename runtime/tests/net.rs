//! The test guest's TCP server through virtio-net and a Linux tap: a namespace made by the
//! test holds the tap (10.0.0.1/24, no route out) and the client; the guest is 10.0.0.2.
//! Everything the test creates lives in that namespace and goes with it on every exit path.

mod common;

use colo_runtime::devices::virtio::net::DevicePhase;
use colo_runtime::net::kvclient::{KvConnection, Timeouts};
use colo_runtime::net::netns::NetNs;
use colo_runtime::net::tap::{Tap, TapLink};
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
