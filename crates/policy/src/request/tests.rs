use super::*;

fn refused(raw: &str) -> Refusal {
    normalize_target(raw).expect_err(raw)
}

#[test]
fn normal_paths_pass_unchanged() {
    for p in [
        "/",
        "/orders",
        "/orders/",
        "/orders/42",
        "/a-b_c~d.e/f",
        "/x:y@z!$&'()*+,=",
    ] {
        assert_eq!(normalize_target(p).unwrap().path.as_str(), p);
    }
}

#[test]
fn escapes_are_normalized_once() {
    assert_eq!(
        normalize_target("/%61dmin").unwrap().path.as_str(),
        "/admin"
    );
    assert_eq!(normalize_target("/a%2db").unwrap().path.as_str(), "/a-b");
    assert_eq!(normalize_target("/a%20b").unwrap().path.as_str(), "/a%20b");
    assert_eq!(
        normalize_target("/a%c3%a9").unwrap().path.as_str(),
        "/a%C3%A9"
    );
    let t = normalize_target("/q?x=1&y=/z").unwrap();
    assert_eq!(t.query.as_deref(), Some("x=1&y=/z"));
    assert_eq!(t.to_origin_form(), "/q?x=1&y=/z");
}

#[test]
fn double_slash_is_refused() {
    assert!(refused("//admin").reason.contains("empty path segment"));
    assert!(refused("/a//b").reason.contains("empty path segment"));
}

#[test]
fn encoded_slash_is_refused_in_either_case() {
    assert!(refused("/%2Fadmin").reason.contains("escaped '/'"));
    assert!(refused("/%2fadmin").reason.contains("escaped '/'"));
    assert!(refused("/%5cadmin").reason.contains("escaped '\\'"));
}

#[test]
fn dot_segments_are_refused_even_escaped() {
    for p in [
        "/admin/../admin",
        "/./admin",
        "/a/.",
        "/%2e%2e/admin",
        "/%2E/admin",
        "/.%2e/x",
    ] {
        assert!(refused(p).reason.contains("dot segment"), "{p}");
    }
    // A dot inside a segment is an ordinary character.
    assert!(normalize_target("/a..b/.well-known").is_ok());
}

#[test]
fn backslash_fragment_params_and_nul_are_refused() {
    assert!(refused("\\admin").reason.contains("starting with '/'"));
    assert!(refused("/\\admin").reason.contains("'\\'"));
    assert!(refused("/admin#x").reason.contains("fragment"));
    assert!(refused("/admin;x").reason.contains("path parameters"));
    assert!(refused("/admin%00").reason.contains("NUL"));
    assert!(refused("/admin\0").reason.contains("NUL"));
    assert!(refused("/a%0a").reason.contains("control"));
    assert!(refused("/a b").reason.contains("0x20"));
    assert!(refused("/a%zz").reason.contains("malformed percent-escape"));
    assert!(refused("/a%4").reason.contains("malformed percent-escape"));
    assert!(refused("http://x/admin").reason.contains("absolute-form"));
    assert!(refused("*").reason.contains("absolute-form"));
    assert!(refused("/q?a\u{7f}").reason.contains("query"));
    assert_eq!(
        refused(&format!("/{}", "a".repeat(MAX_TARGET_LEN))).status,
        414
    );
}

#[test]
fn methods_are_exact() {
    assert_eq!(Method::parse("GET").unwrap(), Method::Get);
    let e = Method::parse("get").unwrap_err();
    assert_eq!(e.status, 405);
    assert!(e.reason.contains("case-sensitive"), "{e}");
    let e = Method::parse("PROPFIND").unwrap_err();
    assert!(e.reason.contains("not allowed"), "{e}");
    assert!(Method::parse("TRACE").is_err());
    assert!(Method::parse("CONNECT").is_err());
}

#[test]
fn framing_refuses_ambiguity() {
    let h = |v: &[(&'static str, &'static str)]| {
        request_framing(v.iter().map(|(n, v)| (*n, v.as_bytes())))
    };
    assert_eq!(h(&[]).unwrap(), Framing::Empty);
    assert_eq!(h(&[("Content-Length", "5")]).unwrap(), Framing::Length(5));
    assert_eq!(
        h(&[("transfer-encoding", "Chunked")]).unwrap(),
        Framing::Chunked
    );
    let e = h(&[("Content-Length", "5"), ("Transfer-Encoding", "chunked")]).unwrap_err();
    assert!(
        e.reason
            .contains("conflicting Content-Length and Transfer-Encoding")
    );
    assert!(h(&[("Content-Length", "5"), ("content-length", "5")]).is_err());
    assert!(h(&[("Content-Length", "+5")]).is_err());
    assert!(h(&[("Content-Length", "5 ")]).is_err());
    assert!(h(&[("Transfer-Encoding", "gzip, chunked")]).is_err());
    assert!(
        h(&[
            ("Transfer-Encoding", "chunked"),
            ("Transfer-Encoding", "chunked")
        ])
        .is_err()
    );
}

#[test]
fn authority_is_compared_exactly() {
    assert!(check_authority(Some("orders.shop"), "orders.shop").is_ok());
    assert!(check_authority(Some("orders.shop:8080"), "orders.shop").is_ok());
    let e = check_authority(Some("Orders.Shop"), "orders.shop").unwrap_err();
    assert_eq!(e.status, 421);
    assert!(e.reason.contains("compared exactly"), "{e}");
    assert!(check_authority(Some("ORDERS.SHOP:80"), "orders.shop").is_err());
    assert!(check_authority(Some("evil.shop"), "orders.shop").is_err());
    assert!(
        check_authority(None, "orders.shop")
            .unwrap_err()
            .reason
            .contains("missing Host")
    );
}

#[test]
fn grpc_paths() {
    let p = normalize_target("/pkg.Orders/Get").unwrap().path;
    assert_eq!(grpc_call(&p), Some(("pkg.Orders", "Get")));
    let p = normalize_target("/pkg.Orders/Get/x").unwrap().path;
    assert_eq!(grpc_call(&p), None);
}

proptest::proptest! {
    /// Normal form is a fixed point, and nothing that passes contains what the refusals name.
    #[test]
    fn normal_form_is_stable(raw in "/[a-zA-Z0-9%./;#\\\\?=&_~-]{0,40}") {
        if let Ok(t) = normalize_target(&raw) {
            let again = normalize_target(&t.to_origin_form()).unwrap();
            proptest::prop_assert_eq!(&again, &t);
            let p = t.path.as_str();
            proptest::prop_assert!(!p.contains("//") && !p.contains('\\') && !p.contains(';'));
            proptest::prop_assert!(!p.split('/').any(|s| s == "." || s == ".."));
            proptest::prop_assert!(!p.to_ascii_uppercase().contains("%2F"));
        }
    }
}
