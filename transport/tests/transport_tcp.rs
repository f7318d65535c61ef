//! TCP backend: handshake, byte-exact messages and bulk transfers, ordering, one-sided reads,
//! refusals of a wrong token or version, and a peer vanishing mid-frame.

use manta_transport::{
    Address, Connection, Incoming, Listener, RefusalReason, Tag, TransferId, TransportConfig,
    TransportError,
};
use std::sync::Arc;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(30);

fn cfg(name: &str) -> TransportConfig {
    let mut c = TransportConfig::new(b"cluster-secret".to_vec(), name);
    c.handshake_timeout = Duration::from_secs(2);
    c
}

async fn pair() -> (Connection, Connection) {
    let l = Listener::bind(&Address::Tcp("127.0.0.1:0".parse().unwrap()), cfg("server"))
        .await
        .unwrap();
    let addr = l.local_addr().unwrap();
    let c = cfg("client");
    let (a, b) = tokio::join!(l.accept(), Connection::connect(&addr, &c));
    (a.unwrap(), b.unwrap())
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn handshake_exchanges_names() {
    tokio::time::timeout(LIMIT, async {
        let (server, client) = pair().await;
        assert_eq!(server.peer_name(), "client");
        assert_eq!(client.peer_name(), "server");
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn small_and_large_messages_round_trip_in_order() {
    tokio::time::timeout(LIMIT, async {
        let (mut server, mut client) = pair().await;
        let msgs: Vec<Vec<u8>> = (0..2000u32)
            .map(|i| pattern((i as usize * 37) % 5000, i))
            .collect();
        let sender = async {
            for (i, m) in msgs.iter().enumerate() {
                client.send(Tag(i as u64), m).await.unwrap();
            }
            client
        };
        let receiver = async {
            for (i, m) in msgs.iter().enumerate() {
                match server.recv().await.unwrap() {
                    Incoming::Message(got) => {
                        assert_eq!(got.tag, Tag(i as u64));
                        assert_eq!(&got.payload, m);
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        };
        let (_client, ()) = tokio::join!(sender, receiver);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn bulk_64_mib_is_byte_exact() {
    tokio::time::timeout(LIMIT, async {
        let (mut server, mut client) = pair().await;
        let data = pattern(64 << 20, 7);
        let send = client.send_bulk(TransferId(42), &data);
        let recv = async {
            let Incoming::Bulk(b) = server.recv().await.unwrap() else {
                panic!("expected bulk")
            };
            assert_eq!(b.id(), TransferId(42));
            let mut dst = vec![0u8; b.len() as usize];
            b.read_into(&mut dst).await.unwrap();
            dst
        };
        let (sent, got) = tokio::join!(send, recv);
        sent.unwrap();
        assert!(got == data, "bulk bytes differ");
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn unread_bulk_is_skipped_and_messages_follow() {
    tokio::time::timeout(LIMIT, async {
        let (mut server, mut client) = pair().await;
        client
            .send_bulk(TransferId(1), &pattern(3 << 20, 1))
            .await
            .ok();
        let sender = async {
            client
                .send_bulk(TransferId(2), &pattern(3 << 20, 2))
                .await
                .unwrap();
            client.send(Tag(9), b"after").await.unwrap();
            client
        };
        let receiver = async {
            let Incoming::Bulk(b) = server.recv().await.unwrap() else {
                panic!()
            };
            assert_eq!(b.id(), TransferId(1));
            drop(b);
            let Incoming::Bulk(b) = server.recv().await.unwrap() else {
                panic!()
            };
            assert_eq!(b.into_vec().await.unwrap(), pattern(3 << 20, 2));
            let Incoming::Message(m) = server.recv().await.unwrap() else {
                panic!()
            };
            assert_eq!(m.payload, b"after");
        };
        let _ = tokio::join!(sender, receiver);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn one_sided_read_of_a_registered_region() {
    tokio::time::timeout(LIMIT, async {
        let (mut server, mut client) = pair().await;
        let bytes: Arc<Vec<u8>> = Arc::new(pattern(5 << 20, 3));
        let region = server.register(bytes.clone());
        let remote = region.remote();
        let desc = remote.to_bytes();
        let serve = async {
            // The target's progress engine answers reads while it waits for a message.
            let Incoming::Message(m) = server.recv().await.unwrap() else {
                panic!()
            };
            assert_eq!(m.payload, b"done");
            server
        };
        let read = async {
            let remote = manta_transport::RemoteRegion::from_bytes(&desc).unwrap();
            let mut dst = vec![0u8; 1 << 20];
            client.read(&remote, 4 << 20, &mut dst).await.unwrap();
            assert!(dst[..] == bytes[4 << 20..], "read bytes differ");
            let mut oob = vec![0u8; 2 << 20];
            let err = client.read(&remote, 4 << 20, &mut oob).await.unwrap_err();
            assert!(matches!(err, TransportError::RemoteRead { .. }), "{err}");
            client.send(Tag(0), b"done").await.unwrap();
        };
        let (mut server, ()) = tokio::join!(serve, read);
        assert!(server.deregister(region));
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn wrong_token_is_refused_on_both_sides() {
    tokio::time::timeout(LIMIT, async {
        let l = Listener::bind(&Address::Tcp("127.0.0.1:0".parse().unwrap()), cfg("server"))
            .await
            .unwrap();
        let addr = l.local_addr().unwrap();
        let mut bad = cfg("intruder");
        bad.cluster_token = b"guess".to_vec();
        let (a, c) = tokio::join!(l.accept(), Connection::connect(&addr, &bad));
        assert!(matches!(
            a.unwrap_err(),
            TransportError::Rejected {
                reason: RefusalReason::WrongToken,
                ..
            }
        ));
        assert!(matches!(
            c.unwrap_err(),
            TransportError::Refused {
                reason: RefusalReason::WrongToken,
                ..
            }
        ));
        // The listener still serves good peers.
        let good = cfg("good");
        let (a, c) = tokio::join!(l.accept(), Connection::connect(&addr, &good));
        a.unwrap();
        c.unwrap();
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn peer_disconnect_mid_frame_is_an_error() {
    tokio::time::timeout(LIMIT, async {
        let (mut server, mut client) = pair().await;
        // Start a bulk transfer larger than the socket buffers and drop the sender mid-way.
        let data = pattern(32 << 20, 5);
        let _ = tokio::time::timeout(
            Duration::from_millis(200),
            client.send_bulk(TransferId(1), &data),
        )
        .await;
        drop(client);
        let Incoming::Bulk(b) = server.recv().await.unwrap() else {
            panic!()
        };
        let err = b.into_vec().await.unwrap_err();
        assert!(
            matches!(
                err,
                TransportError::Malformed { .. } | TransportError::Recv { .. }
            ),
            "{err}"
        );
        // And the connection refuses further use.
        assert!(matches!(
            server.recv().await.unwrap_err(),
            TransportError::Broken { .. }
        ));
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn clean_close_is_reported_as_closed() {
    tokio::time::timeout(LIMIT, async {
        let (mut server, client) = pair().await;
        client.close().await.unwrap();
        assert!(matches!(
            server.recv().await.unwrap_err(),
            TransportError::Closed { .. }
        ));
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn silent_peer_does_not_delay_a_good_one() {
    tokio::time::timeout(LIMIT, async {
        // cfg() has a 2 s handshake timeout.
        let l = Listener::bind(&Address::Tcp("127.0.0.1:0".parse().unwrap()), cfg("server"))
            .await
            .unwrap();
        let addr = l.local_addr().unwrap();
        let Address::Tcp(sa) = addr.clone() else {
            panic!("tcp address")
        };
        // A raw peer that connects first and never says anything.
        let silent = std::net::TcpStream::connect(sa).unwrap();
        let start = std::time::Instant::now();
        let c = cfg("client");
        let (accepted, connected) = tokio::join!(l.accept(), Connection::connect(&addr, &c));
        let elapsed = start.elapsed();
        let server = accepted.unwrap();
        assert_eq!(server.peer_name(), "client");
        connected.unwrap();
        assert!(
            elapsed < Duration::from_secs(1),
            "good peer waited {elapsed:?} behind a silent one"
        );
        // The silent peer's handshake still times out, as an error from a later accept.
        match l.accept().await {
            Err(TransportError::HandshakeTimeout { .. }) => {}
            other => panic!("expected the silent peer's timeout, got {other:?}"),
        }
        drop(silent);
    })
    .await
    .expect("test timed out");
}
