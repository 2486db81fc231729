//! Publish storm: 5 000 messages published back to back while a subscriber polls in a
//! loop with its cursor. It must receive every message exactly once, in order, and
//! never see `Messages-Lost` (the buffer is large enough to hold them all).

mod common;

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::http::Conn;
use common::protocol::{cursor_now, id_num, publish_id, stat};
use common::server::Server;

const MESSAGES: usize = 5_000;

struct Received {
    id: String,
    body: Vec<u8>,
    lost: bool,
}

#[test]
fn looping_subscriber_gets_every_message_of_a_5000_message_storm_in_order() {
    let s = Server::start(&["--buffer-messages", "8192"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    let start_cursor = cursor_now(s.public, "storm");

    let public = s.public;
    let (ready_tx, ready_rx) = mpsc::channel();
    let subscriber = thread::spawn(move || {
        let mut c = Conn::open(public);
        let mut cursor = start_cursor;
        let mut got: Vec<Received> = Vec::with_capacity(MESSAGES);
        let mut signalled = false;
        while got.len() < MESSAGES && Instant::now() < deadline {
            c.send_request(
                "GET",
                &format!("/sub/storm?since={cursor}&timeout=5"),
                &[],
                None,
            );
            if !signalled {
                signalled = true;
                let _ = ready_tx.send(());
            }
            let r = c.response();
            match r.status {
                200 => {
                    let id = r.message_id();
                    assert!(
                        id_num(&id) > id_num(&cursor),
                        "id {id} not after cursor {cursor}"
                    );
                    got.push(Received {
                        id: id.clone(),
                        body: r.body,
                        lost: r
                            .headers
                            .iter()
                            .any(|(n, _)| n.eq_ignore_ascii_case("messages-lost")),
                    });
                    cursor = id;
                }
                204 => assert_eq!(r.message_id(), cursor, "204 moved the cursor"),
                _ => panic!("subscriber got {}", r.brief()),
            }
        }
        got
    });

    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("subscriber started");
    let mut publisher = Conn::open(s.admin);
    let mut ids = Vec::with_capacity(MESSAGES);
    for i in 0..MESSAGES {
        assert!(Instant::now() < deadline, "published only {i} in time");
        let r = publisher.request("POST", "/pub/storm", &[], Some(format!("m{i}").as_bytes()));
        ids.push(publish_id(&r));
    }

    let got = subscriber.join().expect("subscriber thread panicked");
    let mut problems = Vec::new();
    if got.len() != MESSAGES {
        problems.push(format!("received {} of {MESSAGES}", got.len()));
    }
    for (i, m) in got.iter().enumerate() {
        let want = format!("m{i}");
        if m.body != want.as_bytes() || ids.get(i) != Some(&m.id) || m.lost {
            problems.push(format!(
                "#{i}: got {:?} id {} lost={}, want {want:?} id {:?}",
                String::from_utf8_lossy(&m.body),
                m.id,
                m.lost,
                ids.get(i)
            ));
        }
        if problems.len() > 10 {
            break;
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(stat(s.admin, "published"), MESSAGES as u64);
}
