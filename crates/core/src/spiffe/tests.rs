//! Table tests taken from the SPIFFE ID specification (section 2 and its examples) and from the
//! corner cases the reference implementations test.

use super::*;

#[test]
fn valid_ids_from_the_spec_parse_and_round_trip() {
    let cases = [
        ("spiffe://example.org", "example.org", ""),
        ("spiffe://trustdomain/path", "trustdomain", "/path"),
        (
            "spiffe://example.org/ns/prod/svc/frontend",
            "example.org",
            "/ns/prod/svc/frontend",
        ),
        (
            "spiffe://staging.example.com/payments/mysql",
            "staging.example.com",
            "/payments/mysql",
        ),
        (
            "spiffe://k8s-west.example.com/ns/staging/sa/default",
            "k8s-west.example.com",
            "/ns/staging/sa/default",
        ),
        ("spiffe://td_1/A-Z.a_z-09", "td_1", "/A-Z.a_z-09"),
        ("spiffe://td/...", "td", "/..."),
        ("spiffe://td/.a", "td", "/.a"),
    ];
    for (input, td, path) in cases {
        let id = SpiffeId::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(id.trust_domain_str(), td, "{input}");
        assert_eq!(id.path(), path, "{input}");
        assert_eq!(id.to_string(), input);
    }
}

#[test]
fn invalid_ids_are_refused_with_the_reason() {
    use SpiffeIdError as E;
    let cases: &[(&str, SpiffeIdError)] = &[
        ("", E::Empty),
        ("example.org/path", E::WrongScheme),
        ("SPIFFE://example.org", E::WrongScheme),
        ("spiffe:/example.org", E::WrongScheme),
        ("https://example.org/path", E::WrongScheme),
        ("spiffe://", E::MissingTrustDomain),
        ("spiffe:///path", E::MissingTrustDomain),
        (
            "spiffe://Example.org/path",
            E::BadTrustDomainChar { found: 'E', at: 0 },
        ),
        (
            "spiffe://example.org:8080/path",
            E::BadTrustDomainChar { found: ':', at: 11 },
        ),
        (
            "spiffe://user@example.org/path",
            E::BadTrustDomainChar { found: '@', at: 4 },
        ),
        (
            "spiffe://example.org?query",
            E::BadTrustDomainChar { found: '?', at: 11 },
        ),
        (
            "spiffe://example.org#frag",
            E::BadTrustDomainChar { found: '#', at: 11 },
        ),
        (
            "spiffe://exa%41mple.org",
            E::BadTrustDomainChar { found: '%', at: 3 },
        ),
        ("spiffe://example.org/", E::TrailingSlash),
        ("spiffe://example.org/path/", E::TrailingSlash),
        ("spiffe://example.org//path", E::EmptySegment),
        ("spiffe://example.org/a//b", E::EmptySegment),
        ("spiffe://example.org/.", E::DotSegment),
        ("spiffe://example.org/..", E::DotSegment),
        ("spiffe://example.org/a/../b", E::DotSegment),
        ("spiffe://example.org/a/./b", E::DotSegment),
        ("spiffe://example.org/a%2Fb", E::BadPathChar { found: '%' }),
        (
            "spiffe://example.org/path?query",
            E::BadPathChar { found: '?' },
        ),
        (
            "spiffe://example.org/path#frag",
            E::BadPathChar { found: '#' },
        ),
        (
            "spiffe://example.org/pa\0th",
            E::BadPathChar { found: '\0' },
        ),
        ("spiffe://example.org/pa th", E::BadPathChar { found: ' ' }),
        (
            "spiffe://example.org/caf\u{e9}",
            E::BadPathChar { found: '\u{e9}' },
        ),
    ];
    for (input, want) in cases {
        assert_eq!(
            SpiffeId::parse(input).as_ref(),
            Err(want),
            "input {input:?}"
        );
    }
}

#[test]
fn error_messages_say_what_is_allowed() {
    let err = SpiffeId::parse("spiffe://Example.org").unwrap_err();
    assert_eq!(
        err.to_string(),
        "trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores (found 'E' at byte 0)"
    );
    let err = SpiffeId::parse("spiffe://td/a/../b").unwrap_err();
    assert_eq!(err.to_string(), "path cannot contain dot segments");
}

#[test]
fn length_limits_are_enforced() {
    let long_td = "a".repeat(MAX_TRUST_DOMAIN_LEN + 1);
    assert_eq!(
        SpiffeId::parse(&format!("spiffe://{long_td}")),
        Err(SpiffeIdError::TrustDomainTooLong {
            len: MAX_TRUST_DOMAIN_LEN + 1
        })
    );
    let ok_td = "a".repeat(MAX_TRUST_DOMAIN_LEN);
    assert!(SpiffeId::parse(&format!("spiffe://{ok_td}")).is_ok());

    let long_path = "/seg".repeat(MAX_SPIFFE_ID_LEN / 4);
    let input = format!("spiffe://td{long_path}");
    assert_eq!(
        SpiffeId::parse(&input),
        Err(SpiffeIdError::TooLong { len: input.len() })
    );
}

#[test]
fn trust_domain_accepts_bare_name_or_id_without_path() {
    assert_eq!(
        TrustDomain::parse("example.org").unwrap().as_str(),
        "example.org"
    );
    assert_eq!(
        TrustDomain::parse("spiffe://example.org").unwrap().as_str(),
        "example.org"
    );
    assert_eq!(
        TrustDomain::parse("spiffe://example.org/path"),
        Err(SpiffeIdError::UnexpectedPath)
    );
    assert_eq!(
        TrustDomain::parse("http://example.org"),
        Err(SpiffeIdError::WrongScheme)
    );
    assert_eq!(
        TrustDomain::parse(""),
        Err(SpiffeIdError::MissingTrustDomain)
    );
    assert!(matches!(
        TrustDomain::parse("EXAMPLE.org"),
        Err(SpiffeIdError::BadTrustDomainChar { .. })
    ));
}

#[test]
fn segments_and_membership() {
    let td = TrustDomain::parse("example.org").unwrap();
    let id = td.workload(&["ns", "prod", "svc", "web"]).unwrap();
    assert_eq!(id.as_str(), "spiffe://example.org/ns/prod/svc/web");
    assert_eq!(
        id.segments().collect::<Vec<_>>(),
        ["ns", "prod", "svc", "web"]
    );
    assert!(id.is_member_of(&td));
    assert!(!id.is_member_of(&TrustDomain::parse("example.com").unwrap()));
    // A lookalike trust domain that merely starts with the same bytes is not a member.
    let other = SpiffeId::parse("spiffe://example.org.evil/ns/prod").unwrap();
    assert!(!other.is_member_of(&td));
    assert!(td.workload(&["ns", ".."]).is_err());
    assert_eq!(td.id().as_str(), "spiffe://example.org");
    assert_eq!(td.id().path(), "");
}

#[test]
fn serde_refuses_invalid_ids() {
    let ok: SpiffeId = serde_json::from_str("\"spiffe://td/a\"").unwrap();
    assert_eq!(ok.as_str(), "spiffe://td/a");
    let err = serde_json::from_str::<SpiffeId>("\"spiffe://td/a/\"").unwrap_err();
    assert!(err.to_string().contains("trailing slash"), "{err}");
    assert_eq!(serde_json::to_string(&ok).unwrap(), "\"spiffe://td/a\"");
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any string at all: parsing never panics, and what parses prints back byte for byte
        /// (no normalization, so no two spellings of one id).
        #[test]
        fn parse_never_panics_and_round_trips(input in ".{0,300}") {
            if let Ok(id) = SpiffeId::parse(&input) {
                prop_assert_eq!(id.as_str(), input.as_str());
                prop_assert_eq!(id.trust_domain_str().to_owned() + id.path(), input[9..].to_owned());
            }
        }

        /// Ids built from the allowed alphabets always parse, with the parts they were built from.
        #[test]
        fn well_formed_ids_parse(
            td in "[a-z0-9._-]{1,40}",
            segments in proptest::collection::vec("[A-Za-z0-9._-]{1,20}", 0..6),
        ) {
            prop_assume!(segments.iter().all(|s| s != "." && s != ".."));
            let path: String = segments.iter().map(|s| format!("/{s}")).collect();
            let id = SpiffeId::parse(&format!("spiffe://{td}{path}")).unwrap();
            prop_assert_eq!(id.trust_domain_str(), td.as_str());
            prop_assert_eq!(id.path(), path.as_str());
            prop_assert_eq!(id.segments().count(), segments.len());
        }

        /// Inserting one byte outside the alphabet anywhere in a valid id makes it invalid.
        #[test]
        fn one_foreign_byte_is_refused(
            at in 9usize..30,
            bad in prop::sample::select(vec!['%', '?', '#', ' ', '\0', '\\', '@', ':', 'é', '\u{202e}']),
        ) {
            let valid = "spiffe://example.org/ns/prod/svc/web";
            let mut s = valid.to_owned();
            s.insert(at.min(valid.len()), bad);
            prop_assert!(SpiffeId::parse(&s).is_err(), "{:?} parsed", s);
        }
    }
}
