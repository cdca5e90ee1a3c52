//! AWS's event-stream encoding (`application/vnd.amazon.eventstream`), the framing of
//! `InvokeWithResponseStream`'s answer, as botocore's `EventStreamBuffer` decodes it.
//!
//! A message is a prelude (its total length and its headers' length, big-endian `u32`s, and the
//! CRC32 of those 8 bytes), its headers, its payload, and the CRC32 of everything before. A
//! header is its name's length (`u8`), the name, a value type (7: string) and the value's length
//! (`u16`) and bytes. Only the encoder lives here: Ember sends events and reads none.

use bytes::{BufMut, Bytes, BytesMut};

/// The `Content-Type` of an event stream.
pub const CONTENT_TYPE: &str = "application/vnd.amazon.eventstream";

/// The value type of a string header.
const STRING: u8 = 7;
/// The prelude: total length, headers length, prelude CRC.
const PRELUDE_LEN: usize = 12;
/// The message's trailing CRC.
const CRC_LEN: usize = 4;

/// An event message (`:message-type` `event`) of type `event_type`, its payload of
/// `content_type`.
pub fn event(event_type: &str, content_type: &str, payload: &[u8]) -> Bytes {
    message(
        &[
            (":event-type", event_type),
            (":content-type", content_type),
            (":message-type", "event"),
        ],
        payload,
    )
}

/// One message with string headers. Names are at most 255 bytes and values at most 65,535 (the
/// format's limits; Ember's are constants far below), the payload is what the caller bounds.
pub fn message(headers: &[(&str, &str)], payload: &[u8]) -> Bytes {
    let headers_len: usize = headers
        .iter()
        .map(|(name, value)| 1 + name.len() + 1 + 2 + value.len())
        .sum();
    let total = PRELUDE_LEN + headers_len + payload.len() + CRC_LEN;
    let mut out = BytesMut::with_capacity(total);
    // A message over 4 GiB cannot be framed; the API's chunks are at most a few MB.
    out.put_u32(u32::try_from(total).unwrap_or(u32::MAX));
    out.put_u32(u32::try_from(headers_len).unwrap_or(u32::MAX));
    let prelude_crc = crc32fast::hash(&out[..8]);
    out.put_u32(prelude_crc);
    for (name, value) in headers {
        // Lengths within the format's limits: see the doc comment.
        out.put_u8(u8::try_from(name.len()).unwrap_or(u8::MAX));
        out.put_slice(name.as_bytes());
        out.put_u8(STRING);
        out.put_u16(u16::try_from(value.len()).unwrap_or(u16::MAX));
        out.put_slice(value.as_bytes());
    }
    out.put_slice(payload);
    let crc = crc32fast::hash(&out);
    out.put_u32(crc);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes one message the way botocore's `EventStreamMessage` does: lengths and both CRCs
    /// checked, string headers, the payload.
    fn decode(bytes: &[u8]) -> (Vec<(String, String)>, Vec<u8>) {
        let be32 = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
        let total = be32(0) as usize;
        let headers_len = be32(4) as usize;
        assert_eq!(total, bytes.len());
        assert_eq!(be32(8), crc32fast::hash(&bytes[..8]), "prelude CRC");
        assert_eq!(
            be32(total - 4),
            crc32fast::hash(&bytes[..total - 4]),
            "message CRC"
        );
        let mut headers = Vec::new();
        let mut at = PRELUDE_LEN;
        while at < PRELUDE_LEN + headers_len {
            let name_len = bytes[at] as usize;
            let name = String::from_utf8(bytes[at + 1..at + 1 + name_len].to_vec()).unwrap();
            at += 1 + name_len;
            assert_eq!(bytes[at], STRING);
            let len = u16::from_be_bytes([bytes[at + 1], bytes[at + 2]]) as usize;
            let value = String::from_utf8(bytes[at + 3..at + 3 + len].to_vec()).unwrap();
            at += 3 + len;
            headers.push((name, value));
        }
        (headers, bytes[at..total - 4].to_vec())
    }

    /// Golden bytes: botocore 1.x's `EventStreamBuffer` decodes exactly these into a
    /// `PayloadChunk` event whose payload is `hello` (checked with the installed botocore when
    /// written; the end-to-end tests decode live streams with it).
    #[test]
    fn a_payload_chunk_is_framed_as_botocore_decodes_it() {
        let bytes = event("PayloadChunk", "application/octet-stream", b"hello");
        assert_eq!(hex::encode(&bytes), GOLDEN_PAYLOAD_CHUNK);
        let (headers, payload) = decode(&bytes);
        assert_eq!(
            headers,
            [
                (":event-type".into(), "PayloadChunk".into()),
                (":content-type".into(), "application/octet-stream".into()),
                (":message-type".into(), "event".into()),
            ]
        );
        assert_eq!(payload, b"hello");
    }

    #[test]
    fn an_invoke_complete_is_framed_as_botocore_decodes_it() {
        let bytes = event(
            "InvokeComplete",
            "application/json",
            br#"{"ErrorCode":"Unhandled"}"#,
        );
        assert_eq!(hex::encode(&bytes), GOLDEN_INVOKE_COMPLETE);
        assert_eq!(decode(&bytes).1, br#"{"ErrorCode":"Unhandled"}"#);
    }

    #[test]
    fn empty_and_large_payloads_keep_their_lengths() {
        for len in [0, 1, 65_536, 3 << 20] {
            let payload = vec![0xa5; len];
            let bytes = event("PayloadChunk", "application/octet-stream", &payload);
            assert_eq!(decode(&bytes).1.len(), len);
        }
    }

    const GOLDEN_PAYLOAD_CHUNK: &str = "0000006f0000005af5fe871f0b3a6576656e742d7479706507000c5061796c6f61644368756e6b0d3a636f6e74656e742d747970650700186170706c69636174696f6e2f6f637465742d73747265616d0d3a6d6573736167652d747970650700056576656e7468656c6c6f29e71260";
    const GOLDEN_INVOKE_COMPLETE: &str = "0000007d0000005408666efa0b3a6576656e742d7479706507000e496e766f6b65436f6d706c6574650d3a636f6e74656e742d747970650700106170706c69636174696f6e2f6a736f6e0d3a6d6573736167652d747970650700056576656e747b224572726f72436f6465223a22556e68616e646c6564227dd5471993";
}
