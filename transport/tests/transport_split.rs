//! Split connections over TCP and shm: both directions at once from four tasks (10k messages
//! and a few bulk transfers each way, one left unread), `send_batch` of 1000 messages, a
//! dropped `SendHalf` seen as `Closed`, and a `ReadRequest` at a split half given as an
//! error rather than a panic or a hang.

use manta_transport::{
    Address, Connection, FrameError, Incoming, Listener, RecvHalf, RemoteRegion, SendHalf, Tag,
    TransferId, TransportConfig, TransportError,
};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);
const MESSAGES: u32 = 10_000;
/// A bulk transfer follows every message whose index is a multiple of this.
const BULK_EVERY: u32 = 2_500;

#[derive(Clone, Copy, Debug)]
enum Backend {
    Tcp,
    #[cfg(feature = "shm")]
    Shm,
}

fn cfg(name: &str) -> TransportConfig {
    let mut c = TransportConfig::new(b"cluster-secret".to_vec(), name);
    c.handshake_timeout = Duration::from_secs(5);
    c.shm_ring_capacity = 256 << 10;
    c.bulk_chunk_len = 64 << 10;
    c
}

fn addr(backend: Backend) -> Address {
    match backend {
        Backend::Tcp => Address::Tcp("127.0.0.1:0".parse().unwrap()),
        #[cfg(feature = "shm")]
        Backend::Shm => {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            Address::Shm(std::env::temp_dir().join(format!(
                "manta-split-test-{}-{}.sock",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            )))
        }
    }
}

/// (listener kept alive, server side, client side)
async fn pair(backend: Backend) -> (Listener, Connection, Connection) {
    let l = Listener::bind(&addr(backend), cfg("server")).await.unwrap();
    let a = l.local_addr().unwrap();
    let c = cfg("client");
    let (s, k) = tokio::join!(l.accept(), Connection::connect(&a, &c));
    (l, s.unwrap(), k.unwrap())
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

fn msg(i: u32, dir: u32) -> Vec<u8> {
    pattern((i as usize * 7) % 700, i ^ (dir << 24))
}

fn bulk(i: u32, dir: u32) -> Vec<u8> {
    pattern((1 << 20) + i as usize, i ^ (dir << 24) ^ 0xb00)
}

async fn send_stream(mut tx: SendHalf, dir: u32) -> SendHalf {
    for i in 0..MESSAGES {
        tx.send(Tag(u64::from(i)), &msg(i, dir)).await.unwrap();
        if i % BULK_EVERY == 0 {
            tx.send_bulk(TransferId(u64::from(i)), &bulk(i, dir))
                .await
                .unwrap();
        }
    }
    tx
}

async fn recv_stream(mut rx: RecvHalf, dir: u32) -> RecvHalf {
    for i in 0..MESSAGES {
        let Incoming::Message(m) = rx.recv().await.unwrap() else {
            panic!("expected message {i}")
        };
        assert_eq!(m.tag, Tag(u64::from(i)));
        assert!(m.payload == msg(i, dir), "message {i} differs");
        if i % BULK_EVERY == 0 {
            let Incoming::Bulk(b) = rx.recv().await.unwrap() else {
                panic!("expected bulk {i}")
            };
            assert_eq!(b.id(), TransferId(u64::from(i)));
            let want = bulk(i, dir);
            assert_eq!(b.len(), want.len() as u64);
            match (i / BULK_EVERY) % 3 {
                // Left unread: discarded before the next frame.
                0 => drop(b),
                1 => {
                    let mut dst = vec![0u8; b.len() as usize];
                    b.read_into(&mut dst).await.unwrap();
                    assert!(dst == want, "bulk {i} differs");
                }
                _ => assert!(b.into_vec().await.unwrap() == want, "bulk {i} differs"),
            }
        }
    }
    rx
}

async fn full_duplex(backend: Backend) {
    let (_l, server, client) = pair(backend).await;
    let (s_rx, s_tx) = server.into_split();
    let (c_rx, c_tx) = client.into_split();
    assert_eq!(s_tx.peer_name(), "client");
    assert_eq!(c_rx.peer_name(), "server");
    assert_eq!(s_rx.peer_addr(), s_tx.peer_addr());
    let tasks = [
        tokio::spawn(async move { drop(send_stream(c_tx, 1).await) }),
        tokio::spawn(async move { drop(send_stream(s_tx, 2).await) }),
        tokio::spawn(async move { drop(recv_stream(s_rx, 1).await) }),
        tokio::spawn(async move { drop(recv_stream(c_rx, 2).await) }),
    ];
    for t in tasks {
        t.await.unwrap();
    }
}

async fn batch_of_1000(backend: Backend) {
    let (_l, server, client) = pair(backend).await;
    let (mut rx, _s_tx) = server.into_split();
    let (_c_rx, mut tx) = client.into_split();
    let payloads: Vec<Vec<u8>> = (0..1000).map(|i| pattern(i % 40, i as u32)).collect();
    let owned = payloads.clone();
    let sender = tokio::spawn(async move {
        let batch: Vec<(Tag, &[u8])> = owned
            .iter()
            .enumerate()
            .map(|(i, p)| (Tag(i as u64), p.as_slice()))
            .collect();
        tx.send_batch(&batch).await.unwrap();
        tx.send(Tag(5000), b"after").await.unwrap();
        tx
    });
    for (i, p) in payloads.iter().enumerate() {
        let Incoming::Message(m) = rx.recv().await.unwrap() else {
            panic!("expected message {i}")
        };
        assert_eq!(m.tag, Tag(i as u64));
        assert_eq!(&m.payload, p);
    }
    let Incoming::Message(m) = rx.recv().await.unwrap() else {
        panic!("expected the message after the batch")
    };
    assert_eq!((m.tag, m.payload.as_slice()), (Tag(5000), &b"after"[..]));
    drop(sender.await.unwrap());
}

async fn dropped_send_half_is_closed(backend: Backend) {
    let (_l, server, client) = pair(backend).await;
    let (mut rx, _s_tx) = server.into_split();
    let (c_rx, mut tx) = client.into_split();
    tx.send(Tag(1), b"last").await.unwrap();
    drop(tx);
    let Incoming::Message(m) = rx.recv().await.unwrap() else {
        panic!("expected message")
    };
    assert_eq!(m.payload, b"last");
    match rx.recv().await {
        Err(TransportError::Closed { .. }) => {}
        other => panic!("expected Closed, got {other:?}"),
    }
    // The other direction is unaffected.
    drop(c_rx);
}

async fn read_request_at_split_half(backend: Backend) {
    let (_l, server, mut client) = pair(backend).await;
    let (mut rx, tx) = server.into_split();
    let reader = tokio::spawn(async move {
        let remote = RemoteRegion::from_bytes(&[1u8; 16]).unwrap();
        let mut dst = vec![0u8; 64];
        client.read(&remote, 0, &mut dst).await
    });
    match rx.recv().await {
        Err(TransportError::Malformed {
            problem:
                FrameError::Unexpected {
                    kind: "ReadRequest",
                    context: "on a split connection",
                },
            ..
        }) => {}
        other => panic!("expected the split-connection error, got {other:?}"),
    }
    // The half is broken from now on, and dropping the halves ends the peer's wait.
    assert!(matches!(
        rx.recv().await,
        Err(TransportError::Broken { .. })
    ));
    drop((rx, tx));
    assert!(reader.await.unwrap().is_err());
}

macro_rules! backend_tests {
    ($($name:ident => $f:ident),* $(,)?) => {
        mod tcp {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    tokio::time::timeout(LIMIT, $f(Backend::Tcp))
                        .await
                        .expect("test timed out");
                }
            )*
        }
        #[cfg(feature = "shm")]
        mod shm {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    tokio::time::timeout(LIMIT, $f(Backend::Shm))
                        .await
                        .expect("test timed out");
                }
            )*
        }
    };
}

backend_tests! {
    full_duplex_10k_messages_and_bulk_each_way => full_duplex,
    send_batch_of_1000_small_messages => batch_of_1000,
    dropped_send_half_makes_peer_recv_closed => dropped_send_half_is_closed,
    read_request_at_a_split_half_is_an_error => read_request_at_split_half,
}
