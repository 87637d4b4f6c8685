//! A bridge in front of the Workload API's HTTP/2 server that makes gRPC-core clients work.
//!
//! gRPC core (Python, C++, Ruby, ...; since 1.57) sends the percent-encoded socket path as the
//! HTTP/2 `:authority` of a unix-socket call (`%2Frun%2Fworkload.sock`). That is not a valid
//! authority, and the HTTP/2 library under tonic (h2) resets such streams, so py-spiffe could
//! not talk to the Workload API. Go and Rust clients send `localhost`.
//!
//! The bridge reads the client's HTTP/2 frames, decodes each header block (HPACK, with the
//! connection's dynamic table), replaces an `:authority` that is not a valid URI authority with
//! `localhost`, re-encodes the block, and forwards everything else unchanged. The server's
//! frames go back to the client as they are. The authority carries no meaning on a unix
//! socket; nothing else is touched.
//!
//! SECURITY: the bridge parses bytes from any local process that can open the socket. Every
//! length is bounded (frames, header blocks, header lists) and any malformed input closes the
//! connection; a decoder panic, should one exist, ends only this connection's task.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Largest frame accepted from a client (HTTP/2 allows up to 16 MiB when negotiated).
const MAX_FRAME: usize = 1 << 20;
/// Largest header block accepted (Workload API requests carry a handful of headers).
const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// Largest decoded header list (names + values): a small block that references big dynamic
/// table entries over and over ("HPACK bomb") must not blow up memory.
const MAX_HEADER_LIST: usize = 64 * 1024;
/// The dynamic table size the server advertises (HTTP/2's default); a client may not grow it.
const TABLE_SIZE: usize = 4096;
/// Frames the bridge writes are at most the HTTP/2 default frame size.
const OUT_FRAME: usize = 16 * 1024;

fn bad(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_owned())
}

/// Copies the client's side of an HTTP/2 connection to the server, rewriting invalid
/// `:authority` values. Returns when the client closes its side.
pub(crate) async fn forward_client_frames<R, W>(
    mut from_client: R,
    mut to_server: W,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut preface = [0u8; 24];
    from_client.read_exact(&mut preface).await?;
    if &preface != PREFACE {
        return Err(bad("not an HTTP/2 connection"));
    }
    to_server.write_all(&preface).await?;
    let mut decoder = loona_hpack::Decoder::new();
    decoder.set_max_allowed_table_size(TABLE_SIZE);
    let mut encoder = loona_hpack::Encoder::new();
    loop {
        let Some((head, payload)) = read_frame(&mut from_client).await? else {
            to_server.shutdown().await?;
            return Ok(());
        };
        let (kind, flags) = (head[3], head[4]);
        if kind != HEADERS {
            to_server.write_all(&head).await?;
            to_server.write_all(&payload).await?;
            continue;
        }
        let stream = [head[5], head[6], head[7], head[8]];
        let mut block = header_fragment(&payload, flags)?.to_vec();
        let mut end_headers = flags & END_HEADERS != 0;
        while !end_headers {
            let (h, p) = read_frame(&mut from_client)
                .await?
                .ok_or_else(|| bad("connection closed inside a header block"))?;
            if h[3] != CONTINUATION || h[5..9] != stream {
                return Err(bad("a header block was interrupted"));
            }
            block.extend_from_slice(&p);
            if block.len() > MAX_HEADER_BLOCK {
                return Err(bad("header block too large"));
            }
            end_headers = h[4] & END_HEADERS != 0;
        }
        let mut rewritten: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut list_size = 0usize;
        decoder
            .decode_with_cb(&block, |name, value| {
                list_size = list_size.saturating_add(name.len() + value.len() + 32);
                if list_size > MAX_HEADER_LIST {
                    return;
                }
                let value = if name.as_ref() == b":authority" && !valid_authority(&value) {
                    b"localhost".to_vec()
                } else {
                    value.into_owned()
                };
                rewritten.push((name.into_owned(), value));
            })
            .map_err(|e| bad(&format!("HPACK: {e:?}")))?;
        if list_size > MAX_HEADER_LIST {
            return Err(bad("header list too large"));
        }
        let encoded = encoder.encode(rewritten.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        write_header_block(&mut to_server, &stream, flags & END_STREAM, &encoded).await?;
    }
}

fn valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// Reads one frame; `None` at a clean end of stream between frames.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<([u8; 9], Vec<u8>)>> {
    let mut head = [0u8; 9];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    if len > MAX_FRAME {
        return Err(bad("frame too large"));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Some((head, payload)))
}

/// The header block fragment of a HEADERS frame, without padding and priority fields.
fn header_fragment(payload: &[u8], flags: u8) -> io::Result<&[u8]> {
    let mut frag = payload;
    let mut pad = 0usize;
    if flags & PADDED != 0 {
        let (&p, rest) = frag
            .split_first()
            .ok_or_else(|| bad("padded frame without a pad length"))?;
        pad = usize::from(p);
        frag = rest;
    }
    if flags & PRIORITY != 0 {
        frag = frag
            .get(5..)
            .ok_or_else(|| bad("priority fields missing"))?;
    }
    let keep = frag
        .len()
        .checked_sub(pad)
        .ok_or_else(|| bad("padding longer than the frame"))?;
    frag.get(..keep)
        .ok_or_else(|| bad("padding longer than the frame"))
}

/// Writes a header block as HEADERS (+ CONTINUATION) frames for `stream`.
async fn write_header_block<W: AsyncWrite + Unpin>(
    w: &mut W,
    stream: &[u8; 4],
    end_stream: u8,
    block: &[u8],
) -> io::Result<()> {
    let mut chunks = block.chunks(OUT_FRAME).peekable();
    let mut first = true;
    // An empty block still needs one HEADERS frame.
    if block.is_empty() {
        return write_frame(w, HEADERS, end_stream | END_HEADERS, stream, &[]).await;
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let (kind, mut flags) = if first {
            (HEADERS, end_stream)
        } else {
            (CONTINUATION, 0)
        };
        if last {
            flags |= END_HEADERS;
        }
        write_frame(w, kind, flags, stream, chunk).await?;
        first = false;
    }
    Ok(())
}

async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: u8,
    flags: u8,
    stream: &[u8; 4],
    payload: &[u8],
) -> io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| bad("frame too large"))?;
    let l = len.to_be_bytes();
    let head = [
        l[1], l[2], l[3], kind, flags, stream[0], stream[1], stream[2], stream[3],
    ];
    w.write_all(&head).await?;
    w.write_all(payload).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let l = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let s = stream.to_be_bytes();
        let mut out = vec![l[1], l[2], l[3], kind, flags, s[0], s[1], s[2], s[3]];
        out.extend_from_slice(payload);
        out
    }

    async fn run(input: Vec<u8>) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        forward_client_frames(&input[..], &mut out).await?;
        Ok(out)
    }

    fn decode_headers(out: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut rest = out.get(24..).unwrap();
        let mut dec = loona_hpack::Decoder::new();
        let mut blocks = Vec::new();
        while rest.len() >= 9 {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let (kind, payload) = (rest[3], &rest[9..9 + len]);
            if kind == HEADERS {
                blocks.push(dec.decode(payload).unwrap());
            }
            rest = &rest[9 + len..];
        }
        blocks
    }

    #[tokio::test]
    async fn percent_encoded_authorities_become_localhost_and_the_rest_is_kept() {
        let mut enc = loona_hpack::Encoder::new();
        let h1 = enc.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":authority", b"%2Ftmp%2Fworkload.sock"),
            (b":path", b"/SpiffeWorkloadAPI/FetchX509SVID"),
            (b"workload.spiffe.io", b"true"),
        ]);
        // Second request on the same connection uses the dynamic table entries of the first.
        let h2 = enc.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":authority", b"%2Ftmp%2Fworkload.sock"),
            (b":path", b"/x"),
        ]);
        let (first, second) = h1.split_at(h1.len() / 2);
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS, forwarded as is
        input.extend(frame(HEADERS, 0, 1, first));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, second));
        input.extend(frame(0x0, END_STREAM, 1, b"body"));
        let mut padded = vec![3u8];
        padded.extend_from_slice(&h2);
        padded.extend_from_slice(&[0, 0, 0]);
        input.extend(frame(
            HEADERS,
            END_HEADERS | PADDED | END_STREAM,
            3,
            &padded,
        ));
        let out = run(input).await.unwrap();
        let blocks = decode_headers(&out);
        assert_eq!(blocks.len(), 2);
        for b in &blocks {
            let authority = b.iter().find(|(n, _)| n == b":authority").unwrap();
            assert_eq!(authority.1, b"localhost");
        }
        assert!(blocks[0].contains(&(b"workload.spiffe.io".to_vec(), b"true".to_vec())));
        assert!(
            out.windows(4).any(|w| w == b"body"),
            "data frames pass through"
        );
    }

    #[tokio::test]
    async fn valid_authorities_are_kept() {
        let mut enc = loona_hpack::Encoder::new();
        let h = enc.encode([(&b":authority"[..], &b"localhost:8080"[..])]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &h));
        let out = run(input).await.unwrap();
        assert_eq!(decode_headers(&out)[0][0].1, b"localhost:8080");
    }

    #[tokio::test]
    async fn malformed_input_closes_the_connection() {
        assert!(
            run(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec())
                .await
                .is_err()
        );
        let mut huge = PREFACE.to_vec();
        huge.extend([0xff, 0xff, 0xff, HEADERS, END_HEADERS, 0, 0, 0, 1]);
        assert!(run(huge).await.is_err());
        let mut interrupted = PREFACE.to_vec();
        interrupted.extend(frame(HEADERS, 0, 1, &[0x82]));
        interrupted.extend(frame(0x0, 0, 1, b"x"));
        assert!(run(interrupted).await.is_err());
        let mut bad_pad = PREFACE.to_vec();
        bad_pad.extend(frame(HEADERS, END_HEADERS | PADDED, 1, &[9, 0x82]));
        assert!(run(bad_pad).await.is_err());
        // An HPACK bomb: one big header in the dynamic table, then a block of many references.
        let mut enc = loona_hpack::Encoder::new();
        let big = vec![b'a'; 4000];
        let first = enc.encode([(&b"x-big"[..], big.as_slice())]);
        let mut bomb = PREFACE.to_vec();
        bomb.extend(frame(HEADERS, END_HEADERS, 1, &first));
        bomb.extend(frame(HEADERS, END_HEADERS, 3, &vec![0xbe; 1000])); // index 62, repeated
        let err = run(bomb).await.unwrap_err();
        assert!(err.to_string().contains("header list too large"), "{err}");
        // A client may not grow the dynamic table beyond what the server advertises.
        let mut grow = PREFACE.to_vec();
        grow.extend(frame(
            HEADERS,
            END_HEADERS,
            1,
            &[0x3f, 0xe1, 0xff, 0x03, 0x82],
        ));
        assert!(run(grow).await.is_err());
        let mut bad_hpack = PREFACE.to_vec();
        bad_hpack.extend(frame(
            HEADERS,
            END_HEADERS,
            1,
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ));
        assert!(run(bad_hpack).await.is_err());
    }
}
