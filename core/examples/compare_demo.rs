//! A short, self-explaining run of the comparator (the project's "main job" until the VM demo).
//!
//! 1. The primary and the secondary send the same 6000-byte TCP response, cut into different
//!    segments (the primary in 1460-byte segments, the secondary in 1000-byte ones, with
//!    different TTL and window): every primary segment is released, no checkpoint.
//! 2. Then the secondary's next segment differs in one byte: the comparator reports the
//!    miscompare, requests a checkpoint and holds the primary's segment.
//! 3. `checkpoint_done` releases it; the stats are printed.
//!
//! Run: `cargo run -p colo-core --example compare_demo`

use colo_core::compare::testkit::{self, Headers};
use colo_core::compare::{Comparator, CompareConfig, CompareOutput};
use colo_core::packet::tcp_flags::{ACK, PSH};
use colo_core::packet::{Kind, classify};
use colo_core::time::{Duration, Instant};

fn describe(frame: &[u8]) -> String {
    match classify(frame).map(|c| c.kind) {
        Ok(Kind::Tcp(info)) => format!(
            "TCP seq {} .. {} ({} bytes)",
            info.seq.0,
            info.seq.0.wrapping_add(info.payload_len() as u32),
            info.payload_len()
        ),
        _ => format!("{} byte frame", frame.len()),
    }
}

fn drain(cmp: &mut Comparator) -> usize {
    let mut released = 0;
    while let Some(out) = cmp.poll_output() {
        match out {
            CompareOutput::Release(frame) => {
                released += 1;
                println!("    release to client: {}", describe(&frame));
            }
            CompareOutput::WindowUpdate(frame) => {
                println!("    window update to client: {}", describe(&frame));
            }
            CompareOutput::CheckpointRequest(reason) => {
                println!("    CHECKPOINT REQUESTED ({})", reason.as_str());
            }
            CompareOutput::Miscompare { flow, why } => {
                println!("    miscompare on {flow:?}: {why:?}");
            }
        }
    }
    released
}

fn main() {
    let mut cmp = Comparator::new(CompareConfig::default()).expect("default config is valid");
    let primary_headers = Headers::default();
    let secondary_headers = Headers {
        ttl: 63,
        window: 512,
        ..primary_headers
    };
    let response: Vec<u8> = (0..6000u32)
        .map(|i| b"colo output commit "[i as usize % 19])
        .collect();
    let isn = 1_000_000u32;
    let mut now = Instant::from_millis(1);

    println!("1. Same response, different segmentation (primary 1460-byte, secondary 1000-byte)");
    let mut p_chunks = response.chunks(1460).scan(0usize, |off, c| {
        let at = *off;
        *off += c.len();
        Some((at, c))
    });
    let mut s_chunks = response.chunks(1000).scan(0usize, |off, c| {
        let at = *off;
        *off += c.len();
        Some((at, c))
    });
    let mut released = 0;
    loop {
        let p = p_chunks.next();
        let s = s_chunks.next();
        if p.is_none() && s.is_none() {
            break;
        }
        if let Some((at, chunk)) = p {
            println!(
                "  primary sends   seq {} ({} bytes)",
                isn + at as u32,
                chunk.len()
            );
            let frame = testkit::tcp(&primary_headers, isn + at as u32, 1, ACK | PSH, chunk);
            cmp.handle_primary(now, frame);
            released += drain(&mut cmp);
        }
        if let Some((at, chunk)) = s {
            println!(
                "  secondary sends seq {} ({} bytes)",
                isn + at as u32,
                chunk.len()
            );
            let frame = testkit::tcp(&secondary_headers, isn + at as u32, 1, ACK | PSH, chunk);
            cmp.handle_secondary(now, frame);
            released += drain(&mut cmp);
        }
        now += Duration::from_micros(100);
    }
    println!("  -> {released} primary segments released, no checkpoint\n");

    println!("2. The next segment differs in one byte");
    let next_seq = isn + response.len() as u32;
    let mut divergent = b"same bytes on both sides?".to_vec();
    cmp.handle_primary(
        now,
        testkit::tcp(&primary_headers, next_seq, 1, ACK | PSH, &divergent),
    );
    divergent[11] = b'O';
    cmp.handle_secondary(
        now,
        testkit::tcp(&secondary_headers, next_seq, 1, ACK | PSH, &divergent),
    );
    drain(&mut cmp);
    println!(
        "  -> held primary frames: {}, next deadline: {:?}\n",
        cmp.stats().held_primary,
        cmp.poll_timeout()
    );

    println!("3. The checkpoint reached the secondary: checkpoint_done");
    now += Duration::from_millis(20);
    cmp.checkpoint_done(now);
    drain(&mut cmp);

    println!("\nstats: {:#?}", cmp.stats());
    assert!(cmp.stats().is_conserved());
}
