use super::*;

async fn parse(bytes: &[u8]) -> Result<Option<RequestHead>, H1Error> {
    let (mut a, b) = tokio::io::duplex(64 * 1024);
    a.write_all(bytes).await.unwrap();
    drop(a);
    Conn::new(b).read_request(Duration::from_secs(1)).await
}

#[tokio::test]
async fn reads_a_head_and_keeps_the_body() {
    let (mut a, b) = tokio::io::duplex(64 * 1024);
    a.write_all(b"POST /x HTTP/1.1\r\nHost: a.b\r\nContent-Length: 5\r\n\r\nhello")
        .await
        .unwrap();
    drop(a);
    let mut c = Conn::new(b);
    let h = c
        .read_request(Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (h.method.as_str(), h.target.as_str(), h.minor),
        ("POST", "/x", 1)
    );
    let mut out = Vec::new();
    c.relay_body(BodyFraming::Length(5), &mut out)
        .await
        .unwrap();
    assert_eq!(out, b"hello");
}

#[tokio::test]
async fn chunked_bodies_are_reframed() {
    let (mut a, b) = tokio::io::duplex(64 * 1024);
    a.write_all(b"5;ext=1\r\nhello\r\n0\r\nx-t: 1\r\n\r\n")
        .await
        .unwrap();
    drop(a);
    let mut c = Conn::new(b);
    let mut out = Vec::new();
    c.relay_body(BodyFraming::Chunked, &mut out).await.unwrap();
    assert_eq!(out, b"5\r\nhello\r\n0\r\nx-t: 1\r\n\r\n");
}

#[tokio::test]
async fn bad_chunks_are_refused() {
    for body in [
        &b"zz\r\nhello\r\n0\r\n\r\n"[..],
        b"3\r\nhello\r\n0\r\n\r\n",
        b"-1\r\n",
    ] {
        let (mut a, b) = tokio::io::duplex(64 * 1024);
        a.write_all(body).await.unwrap();
        drop(a);
        let mut out = Vec::new();
        let e = Conn::new(b)
            .relay_body(BodyFraming::Chunked, &mut out)
            .await
            .unwrap_err();
        assert!(matches!(e, H1Error::Refused(_) | H1Error::Io(_)), "{e}");
    }
}

#[tokio::test]
async fn oversized_heads_are_refused_with_431() {
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a.b\r\nx: {}\r\n\r\n",
        "a".repeat(MAX_HEAD)
    );
    match parse(big.as_bytes()).await {
        Err(H1Error::Refused(r)) => assert_eq!(r.status, 431, "{r}"),
        other => panic!("{other:?}"),
    }
    let many: String = (0..=MAX_HEADERS).map(|i| format!("x{i}: 1\r\n")).collect();
    match parse(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()).await {
        Err(H1Error::Refused(r)) => assert_eq!(r.status, 431, "{r}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn garbage_is_refused_with_400() {
    match parse(b"GET /\x01 HTTP/1.1\r\n\r\n").await {
        Err(H1Error::Refused(r)) => assert_eq!(r.status, 400, "{r}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn hop_by_hop_fields_are_dropped() {
    let head = RequestHead {
        method: "GET".into(),
        target: "/".into(),
        minor: 1,
        headers: vec![
            ("Host".into(), b"a.b".to_vec()),
            ("Connection".into(), b"keep-alive, x-secret".to_vec()),
            ("X-Secret".into(), b"1".to_vec()),
            ("Keep-Alive".into(), b"5".to_vec()),
            ("ringfence-caller".into(), b"spoofed".to_vec()),
            ("Content-Length".into(), b"0".to_vec()),
        ],
    };
    let out = encode_request(
        &head,
        "/n",
        &["ringfence-caller"],
        &[("ringfence-caller", b"real")],
        BodyFraming::Empty,
    );
    let s = String::from_utf8(out).unwrap();
    assert_eq!(
        s,
        "GET /n HTTP/1.1\r\nHost: a.b\r\nringfence-caller: real\r\n\r\n"
    );
}

#[test]
fn keep_alive_rules() {
    let mut h = RequestHead {
        method: "GET".into(),
        target: "/".into(),
        minor: 1,
        headers: vec![],
    };
    assert!(!h.wants_close());
    h.headers.push(("Connection".into(), b"Close".to_vec()));
    assert!(h.wants_close());
    h.minor = 0;
    h.headers.clear();
    assert!(h.wants_close());
}
