//! Bad input against a real TCP listener, sent with raw `std::net` sockets: garbage, a
//! truncated frame, an oversize length, an unknown kind, a failing flatbuffer, a wrong
//! protocol version, and garbage after a good handshake. Each must give a typed error on the
//! listener and a closed connection — never a panic or a hang.

#[path = "../src/wire/control_generated.rs"]
#[allow(dead_code, unused_imports, clippy::all, missing_docs, unsafe_op_in_unsafe_fn)]
#[allow(unreachable_pub, missing_debug_implementations, clippy::undocumented_unsafe_blocks)]
#[rustfmt::skip]
mod control_generated;

use control_generated::manta::transport::wire as fb;
use manta_transport::{
    Address, FrameError, Listener, PROTOCOL_VERSION, RefusalReason, TransportConfig, TransportError,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const TOKEN: &[u8] = b"cluster-secret";

fn header(version: u16, kind: u8, len: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(16);
    h.extend_from_slice(b"MNTA");
    h.extend_from_slice(&version.to_le_bytes());
    h.push(kind);
    h.push(0);
    h.extend_from_slice(&len.to_le_bytes());
    h.extend_from_slice(&[0; 4]);
    h
}

fn frame(version: u16, kind: u8, body: &[u8]) -> Vec<u8> {
    let mut f = header(version, kind, body.len() as u32);
    f.extend_from_slice(body);
    f
}

/// A `Hello` with the connector nonce `NONCE`.
fn hello(version: u16) -> Vec<u8> {
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let n = fbb.create_string("raw");
    let nonce = fbb.create_vector(&NONCE);
    let h = fb::Hello::create(
        &mut fbb,
        &fb::HelloArgs {
            protocol_version: version,
            peer_name: Some(n),
            nonce: Some(nonce),
        },
    );
    fbb.finish_minimal(h);
    frame(version, 1, fbb.finished_data())
}

/// A `Proof` frame carrying `proof`.
fn proof_frame(proof: &[u8]) -> Vec<u8> {
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let p = fbb.create_vector(proof);
    let t = fb::Proof::create(&mut fbb, &fb::ProofArgs { proof: Some(p) });
    fbb.finish_minimal(t);
    frame(PROTOCOL_VERSION, 10, fbb.finished_data())
}

/// HMAC-SHA256(token, label ‖ 0 ‖ connector nonce ‖ listener nonce): the handshake's proofs.
fn mac(token: &[u8], label: &[u8], connector: &[u8], listener: &[u8]) -> Vec<u8> {
    use hmac::{KeyInit, Mac};
    let mut m = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(token).unwrap();
    m.update(label);
    m.update(&[0]);
    m.update(connector);
    m.update(listener);
    m.finalize().into_bytes().to_vec()
}

/// Reads one frame: (kind, payload).
fn read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).unwrap();
    let mut body = vec![0u8; u32::from_le_bytes(h[8..12].try_into().unwrap()) as usize];
    s.read_exact(&mut body).unwrap();
    (h[6], body)
}

const NONCE: [u8; 32] = [7; 32];

/// Runs a listener, sends `bytes` from a raw socket (then `close_write` if asked), and returns
/// the listener's accept error plus everything the raw socket read until the server closed.
fn run(bytes: Vec<u8>, close_write: bool) -> (TransportError, Vec<u8>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut cfg = TransportConfig::new(TOKEN.to_vec(), "server");
        cfg.handshake_timeout = Duration::from_secs(2);
        cfg.max_frame_len = 1 << 16;
        let l = Listener::bind(&Address::Tcp("127.0.0.1:0".parse().unwrap()), cfg)
            .await
            .unwrap();
        let Address::Tcp(addr) = l.local_addr().unwrap() else {
            unreachable!()
        };
        let client = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(&bytes).unwrap();
            if close_write {
                s.shutdown(std::net::Shutdown::Write).unwrap();
            }
            let mut reply = Vec::new();
            // Ends with EOF when the server closes; a timeout would fail the test.
            s.read_to_end(&mut reply)
                .expect("server must close the connection");
            reply
        });
        let err = tokio::time::timeout(Duration::from_secs(20), l.accept())
            .await
            .expect("accept must not hang")
            .expect_err("bad input must not be accepted");
        drop(l);
        (err, client.join().unwrap())
    })
}

fn problem(e: TransportError) -> FrameError {
    match e {
        TransportError::Malformed { problem, peer } => {
            assert!(
                peer.starts_with("127.0.0.1:"),
                "error names the peer: {peer}"
            );
            problem
        }
        other => panic!("expected Malformed, got {other}"),
    }
}

#[test]
fn garbage_bytes() {
    let (e, _) = run(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), false);
    assert!(matches!(problem(e), FrameError::BadMagic { .. }));
}

#[test]
fn truncated_header() {
    let (e, _) = run(b"MNTA\x01\x00".to_vec(), true);
    assert!(matches!(
        problem(e),
        FrameError::Truncated {
            expected: 16,
            got: 6
        }
    ));
}

#[test]
fn truncated_payload() {
    let mut f = hello(PROTOCOL_VERSION);
    f.truncate(f.len() - 5);
    let (e, _) = run(f, true);
    assert!(matches!(problem(e), FrameError::Truncated { .. }));
}

#[test]
fn oversize_length() {
    let (e, _) = run(header(PROTOCOL_VERSION, 1, u32::MAX), false);
    assert!(matches!(
        problem(e),
        FrameError::Oversize { len: u32::MAX, .. }
    ));
}

#[test]
fn a_hello_over_the_unauthenticated_limit_is_refused_at_its_header() {
    // Within max_frame_len (64 KiB here) but over MAX_HELLO_LEN: refused before any payload
    // is read, so an unauthenticated peer cannot make the listener buffer it.
    let len = manta_transport::MAX_HELLO_LEN + 1;
    let (e, _) = run(header(PROTOCOL_VERSION, 1, len), false);
    assert!(matches!(
        problem(e),
        FrameError::Oversize { len: l, max } if l == len && max == manta_transport::MAX_HELLO_LEN
    ));
}

#[test]
fn unknown_kind() {
    let (e, _) = run(header(PROTOCOL_VERSION, 99, 0), false);
    assert!(matches!(problem(e), FrameError::UnknownKind { kind: 99 }));
}

#[test]
fn flatbuffer_failing_verification() {
    let mut f = header(PROTOCOL_VERSION, 1, 8);
    f.extend_from_slice(&[0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0]);
    let (e, reply) = run(f, false);
    assert!(matches!(
        problem(e),
        FrameError::InvalidFlatbuffer { table: "Hello", .. }
    ));
    assert!(
        !reply.is_empty(),
        "a Refused(Malformed) frame is sent before closing"
    );
}

#[test]
fn wrong_protocol_version_is_refused_with_a_reason() {
    let (e, reply) = run(hello(PROTOCOL_VERSION + 1), false);
    assert!(matches!(
        e,
        TransportError::Rejected {
            reason: RefusalReason::WrongVersion,
            ..
        }
    ));
    assert!(
        reply.len() > 16 && reply[6] == 3,
        "a Refused frame comes back"
    );
    let r = flatbuffers::root::<fb::Refused>(&reply[16..]).unwrap();
    assert_eq!(r.reason(), fb::RefusedReason::WrongVersion);
}

#[test]
fn wrong_token_is_refused_with_a_reason() {
    // A proof made with another token (sent at once: it cannot depend on the challenge).
    let mut bytes = hello(PROTOCOL_VERSION);
    bytes.extend_from_slice(&proof_frame(&mac(
        b"nope",
        b"manta connector",
        &NONCE,
        &[0; 32],
    )));
    let (e, reply) = run(bytes, false);
    assert!(matches!(
        e,
        TransportError::Rejected {
            reason: RefusalReason::WrongToken,
            ..
        }
    ));
    // A Challenge, then a Refused.
    assert_eq!(reply[6], 9, "the listener's challenge comes first");
    let first = 16 + u32::from_le_bytes(reply[8..12].try_into().unwrap()) as usize;
    assert_eq!(reply[first + 6], 3, "then a Refused frame");
    let r = flatbuffers::root::<fb::Refused>(&reply[first + 16..]).unwrap();
    assert_eq!(r.reason(), fb::RefusedReason::WrongToken);
}

#[test]
fn a_proof_in_place_of_hello_or_a_hello_in_place_of_proof_is_malformed() {
    let (e, _) = run(proof_frame(&[0; 32]), false);
    assert!(matches!(problem(e), FrameError::Unexpected { .. }));
    let mut bytes = hello(PROTOCOL_VERSION);
    bytes.extend_from_slice(&hello(PROTOCOL_VERSION));
    let (e, _) = run(bytes, false);
    assert!(matches!(problem(e), FrameError::Unexpected { .. }));
}

/// An impostor on a port a peer used to hold (another local user, say) learns nothing of the
/// token from a connector, and the connector refuses it: it cannot prove the token.
#[test]
fn an_impostor_listener_never_sees_the_token_and_is_refused() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let impostor = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = impostor.local_addr().unwrap();
    let fake = std::thread::spawn(move || {
        let (mut s, _) = impostor.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let (kind, hello) = read_frame(&mut s);
        assert_eq!(kind, 1, "Hello first");
        // It answers like a listener: a challenge, then an ack with a made-up proof.
        let mut fbb = flatbuffers::FlatBufferBuilder::new();
        let n = fbb.create_vector(&[1u8; 32]);
        let c = fb::Challenge::create(&mut fbb, &fb::ChallengeArgs { nonce: Some(n) });
        fbb.finish_minimal(c);
        s.write_all(&frame(PROTOCOL_VERSION, 9, fbb.finished_data()))
            .unwrap();
        let (kind, proof) = read_frame(&mut s);
        assert_eq!(kind, 10, "then a Proof");
        let mut fbb = flatbuffers::FlatBufferBuilder::new();
        let name = fbb.create_string("impostor");
        let p = fbb.create_vector(&[9u8; 32]);
        let a = fb::HelloAck::create(
            &mut fbb,
            &fb::HelloAckArgs {
                protocol_version: PROTOCOL_VERSION,
                peer_name: Some(name),
                proof: Some(p),
            },
        );
        fbb.finish_minimal(a);
        s.write_all(&frame(PROTOCOL_VERSION, 2, fbb.finished_data()))
            .unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        [hello, proof, rest].concat()
    });
    let err = rt.block_on(async {
        let mut cfg = TransportConfig::new(TOKEN.to_vec(), "victim");
        cfg.handshake_timeout = Duration::from_secs(5);
        manta_transport::Connection::connect(&Address::Tcp(addr), &cfg)
            .await
            .expect_err("an impostor is refused")
    });
    assert!(matches!(err, TransportError::Unproven { .. }), "{err}");
    let seen = fake.join().unwrap();
    assert!(
        !seen.windows(TOKEN.len()).any(|w| w == TOKEN),
        "the token never reaches the listener"
    );
}

#[test]
fn silent_peer_times_out() {
    let (e, _) = run(Vec::new(), false);
    assert!(matches!(e, TransportError::HandshakeTimeout { .. }));
}

#[test]
fn garbage_after_a_good_handshake_closes_the_connection() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cfg = TransportConfig::new(TOKEN.to_vec(), "server");
        let l = Listener::bind(&Address::Tcp("127.0.0.1:0".parse().unwrap()), cfg)
            .await
            .unwrap();
        let Address::Tcp(addr) = l.local_addr().unwrap() else {
            unreachable!()
        };
        let client = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(&hello(PROTOCOL_VERSION)).unwrap();
            let (kind, challenge) = read_frame(&mut s);
            assert_eq!(kind, 9, "Challenge");
            let theirs = flatbuffers::root::<fb::Challenge>(&challenge)
                .unwrap()
                .nonce()
                .unwrap()
                .bytes()
                .to_vec();
            let proof = mac(TOKEN, b"manta connector", &NONCE, &theirs);
            s.write_all(&proof_frame(&proof)).unwrap();
            let (kind, _) = read_frame(&mut s);
            assert_eq!(kind, 2, "HelloAck");
            // A Message frame whose payload is not an Envelope.
            let mut f = header(PROTOCOL_VERSION, 4, 4);
            f.extend_from_slice(&[1, 2, 3, 4]);
            s.write_all(&f).unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest)
                .expect("server must close the connection");
        });
        let mut conn = l.accept().await.unwrap();
        let e = tokio::time::timeout(Duration::from_secs(10), conn.recv())
            .await
            .expect("recv must not hang")
            .expect_err("bad envelope");
        assert!(matches!(
            problem(e),
            FrameError::InvalidFlatbuffer {
                table: "Envelope",
                ..
            }
        ));
        drop(conn);
        client.join().unwrap();
    });
}

#[test]
fn handshakes_beyond_the_pending_cap_are_closed_at_once() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut cfg = TransportConfig::new(TOKEN.to_vec(), "server");
        cfg.handshake_timeout = Duration::from_secs(10);
        cfg.max_pending_handshakes = 2;
        let l = Listener::bind(&Address::Tcp("127.0.0.1:0".parse().unwrap()), cfg)
            .await
            .unwrap();
        let Address::Tcp(addr) = l.local_addr().unwrap() else {
            unreachable!()
        };
        let l = std::sync::Arc::new(l);
        let accepting = l.clone();
        let task = tokio::spawn(async move {
            loop {
                let _ = accepting.accept().await;
            }
        });
        let client = std::thread::spawn(move || {
            // Two silent peers fill the cap; a third is closed without waiting for the timeout.
            let silent: Vec<_> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
            std::thread::sleep(Duration::from_millis(300));
            let mut third = TcpStream::connect(addr).unwrap();
            third
                .set_read_timeout(Some(Duration::from_secs(8)))
                .unwrap();
            let start = std::time::Instant::now();
            let mut b = [0u8; 1];
            let r = third.read(&mut b);
            let waited = start.elapsed();
            drop(silent);
            (r.map_err(|e| e.kind()), waited)
        });
        while !client.is_finished() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (r, waited) = client.join().unwrap();
        task.abort();
        assert!(
            matches!(r, Ok(0) | Err(std::io::ErrorKind::ConnectionReset)),
            "the third connection is closed: {r:?}"
        );
        assert!(
            waited < Duration::from_secs(3),
            "closed at once, not after the handshake timeout: {waited:?}"
        );
    })
}
