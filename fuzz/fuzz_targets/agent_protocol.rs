//! Fuzzes the host <-> agent frame decoder (`ember_protocol::Codec`) on both sides.
//!
//! The input is a byte stream as either peer could receive it. Invariants: decoding never panics;
//! it gives the same messages and the same final error whether the stream arrives at once or in
//! small pieces; a decoded message, encoded again, decodes to an equal message; and a frame is
//! consumed whole (prefix and body), nothing more.
#![no_main]

use std::fmt::Debug;

use bytes::BytesMut;
use ember_protocol::{AgentMessage, Codec, HostMessage};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::codec::{Decoder, Encoder};

/// A small frame limit, so that both sides of it are reached; the checks do not depend on it.
const MAX_FRAME: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    // The first byte picks how the stream is cut into reads: 1 to 16 bytes at a time.
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(cut % 16) + 1;
    check::<AgentMessage>(stream, chunk); // what the host decodes
    check::<HostMessage>(stream, chunk); // what the agent decodes
});

/// Outcome of decoding a whole stream: every message, then the error that stopped it, if any.
type Decoded<M> = (Vec<M>, Option<String>);

fn check<M>(stream: &[u8], chunk: usize)
where
    M: DeserializeOwned + Serialize + PartialEq + Debug + Clone,
{
    let at_once = decode_all::<M>(stream, stream.len().max(1));
    let in_pieces = decode_all::<M>(stream, chunk);
    assert_eq!(
        at_once, in_pieces,
        "the same stream decodes the same whichever way it is cut"
    );
    let mut codec = Codec::<M, M>::with_max_frame_len(MAX_FRAME);
    for message in at_once.0 {
        let mut buf = BytesMut::new();
        match codec.encode(message.clone(), &mut buf) {
            Ok(()) => {}
            // A decoded message re-encodes larger only if its JSON was more compact than ours
            // (escapes written raw, say); then nothing may be written.
            Err(_) => {
                assert!(
                    buf.is_empty(),
                    "a failed encode leaves the buffer as it was"
                );
                continue;
            }
        }
        let len = u32::from_be_bytes(buf[..4].try_into().expect("4-byte prefix")) as usize;
        assert_eq!(len + 4, buf.len(), "the prefix gives the body's length");
        let again = codec
            .decode(&mut buf)
            .expect("an encoded message decodes")
            .expect("an encoded message is a whole frame");
        assert_eq!(again, message, "encode then decode gives the message back");
        assert!(buf.is_empty(), "decoding takes the whole frame");
    }
}

/// Feeds `stream` to a decoder `chunk` bytes at a time, as reads would arrive.
fn decode_all<M: DeserializeOwned>(stream: &[u8], chunk: usize) -> Decoded<M> {
    let mut codec = Codec::<M, M>::with_max_frame_len(MAX_FRAME);
    let mut buf = BytesMut::new();
    let mut messages = Vec::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match codec.decode(&mut buf) {
                Ok(Some(message)) => {
                    assert!(buf.len() + 4 <= before, "a frame consumes its prefix");
                    messages.push(message);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "an incomplete frame is left in place");
                    break;
                }
                Err(e) => return (messages, Some(format!("{e:?}"))),
            }
        }
    }
    (messages, None)
}
