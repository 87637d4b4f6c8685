use super::*;
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType,
};

const NOW: UnixTime = UnixTime::from_secs(1_800_000_000);

struct Pki {
    td: TrustDomain,
    ca_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

fn new_pki(td: &str) -> Pki {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.not_before = time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
    p.not_after = time::OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap();
    let cert = p.self_signed(&key).unwrap();
    Pki {
        td: TrustDomain::parse(td).unwrap(),
        ca_der: cert.der().to_vec(),
        issuer: Issuer::new(p, key),
    }
}

fn svid(pki: &Pki, id: &str) -> X509Material {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    p.not_before = time::OffsetDateTime::from_unix_timestamp(1_799_000_000).unwrap();
    p.not_after = time::OffsetDateTime::from_unix_timestamp(1_801_000_000).unwrap();
    let cert = p.signed_by(&key, &pki.issuer).unwrap();
    X509Material {
        spiffe_id: SpiffeId::parse(id).unwrap(),
        cert_der: cert.der().to_vec(),
        intermediates: vec![],
        key_pkcs8_der: key.serialize_der(),
        bundle_der: pki.ca_der.clone(),
        trust_domain: pki.td.clone(),
    }
}

const EDGE: &str = "spiffe://example.org/ns/shop/svc/edge";
const WEB: &str = "spiffe://example.org/ns/shop/svc/web";
const ORDERS: &str = "spiffe://example.org/ns/shop/svc/orders";
const EVIL: &str = "spiffe://example.org/ns/shop/svc/evil";

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn setup() -> (TokenService, JwtBundle, Pki, String) {
    let pki = new_pki("example.org");
    let service = TokenService::generate(pki.td.clone()).unwrap();
    let keys = JwtBundle::parse(&service.jwks()).unwrap();
    let token = service
        .mint(
            &MintRequest {
                subject: "alice".into(),
                for_workload: id(EDGE),
                purpose: Some("checkout".into()),
                context: BTreeMap::from([("req_ip".into(), "192.0.2.1".into())]),
                ttl: DEFAULT_TTL,
            },
            NOW,
        )
        .unwrap();
    (service, keys, pki, token)
}

fn forge(header: &Value, claims: &Value, sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        B64URL.encode(header.to_string()),
        B64URL.encode(claims.to_string()),
        B64URL.encode(sig)
    )
}

fn claims_of(token: &str) -> Value {
    let p = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&B64URL.decode(p).unwrap()).unwrap()
}

#[test]
fn mint_and_verify() {
    let (_, keys, pki, token) = setup();
    let v = verify_token(&token, &keys, &pki.td, NOW).unwrap();
    assert_eq!(v.subject, "alice");
    assert_eq!(v.requester, id(EDGE));
    assert_eq!(v.purpose.as_deref(), Some("checkout"));
    assert_eq!(
        v.context.get("req_ip").map(String::as_str),
        Some("192.0.2.1")
    );
    assert_eq!(claims_of(&token)["aud"], "spiffe://example.org");
    let header: Value =
        serde_json::from_slice(&B64URL.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
    assert_eq!(header["typ"], TOKEN_TYP);
    assert_eq!(header["alg"], "ES256");
}

#[test]
fn alg_none_is_refused() {
    let (_, keys, pki, token) = setup();
    let t = forge(
        &json!({"alg": "none", "typ": TOKEN_TYP}),
        &claims_of(&token),
        b"",
    );
    let e = verify_token(&t, &keys, &pki.td, NOW).unwrap_err();
    assert_eq!(
        e.to_string(),
        "transaction token refused: algorithm \"none\" is not allowed: only ES256 is accepted"
    );
}

#[test]
fn hs256_with_the_public_key_as_secret_is_refused() {
    let (service, keys, pki, token) = setup();
    let jwks: Value = serde_json::from_str(&service.jwks()).unwrap();
    let kid = jwks["keys"][0]["kid"].as_str().unwrap().to_owned();
    let header = json!({"alg": "HS256", "typ": TOKEN_TYP, "kid": kid});
    let input = format!(
        "{}.{}",
        B64URL.encode(header.to_string()),
        B64URL.encode(claims_of(&token).to_string())
    );
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, service.jwks().as_bytes());
    let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    let t = format!("{input}.{}", B64URL.encode(tag.as_ref()));
    let e = verify_token(&t, &keys, &pki.td, NOW).unwrap_err();
    assert!(
        e.to_string().contains("algorithm \"HS256\" is not allowed"),
        "{e}"
    );
}

#[test]
fn expired_and_not_yet_valid_and_too_long_are_refused() {
    let (_, keys, pki, token) = setup();
    let e = verify_token(&token, &keys, &pki.td, NOW.saturating_add(DEFAULT_TTL)).unwrap_err();
    assert!(matches!(e, TxnError::Expired { .. }), "{e}");
    assert!(e.to_string().contains("expired at"));
    let e = verify_token(
        &token,
        &keys,
        &pki.td,
        NOW.saturating_sub(Duration::from_secs(60)),
    )
    .unwrap_err();
    assert!(matches!(e, TxnError::NotYetValid { .. }), "{e}");
    let too_long = TokenService::generate(pki.td.clone()).unwrap().mint(
        &MintRequest {
            subject: "a".into(),
            for_workload: id(EDGE),
            purpose: None,
            context: BTreeMap::new(),
            ttl: Duration::from_secs(301),
        },
        NOW,
    );
    assert!(matches!(too_long, Err(TxnError::Mint(_))));
}

#[test]
fn wrong_audience_is_refused() {
    let (service, _, _, _) = setup();
    let other = TrustDomain::parse("other.org").unwrap();
    let keys = JwtBundle::parse(&service.jwks()).unwrap();
    let token = service
        .mint(
            &MintRequest {
                subject: "alice".into(),
                for_workload: id(EDGE),
                purpose: None,
                context: BTreeMap::new(),
                ttl: DEFAULT_TTL,
            },
            NOW,
        )
        .unwrap();
    let e = verify_token(&token, &keys, &other, NOW).unwrap_err();
    assert_eq!(
        e.to_string(),
        "transaction token refused: aud \"spiffe://example.org\" is not \"spiffe://other.org\""
    );
}

#[test]
fn unknown_key_is_refused() {
    let (_, _, pki, token) = setup();
    let stranger = TokenService::generate(pki.td.clone()).unwrap();
    let keys = JwtBundle::parse(&stranger.jwks()).unwrap();
    let e = verify_token(&token, &keys, &pki.td, NOW).unwrap_err();
    assert!(e.to_string().contains("signed by unknown key"), "{e}");
}

#[test]
fn a_jwt_svid_is_not_a_transaction_token() {
    let pki = new_pki("example.org");
    let issuer = JwtIssuer::generate(pki.td.clone()).unwrap();
    let keys = JwtBundle::parse(&issuer.jwks()).unwrap();
    let jwt = issuer
        .issue(&id(WEB), &["spiffe://example.org".into()], NOW, DEFAULT_TTL)
        .unwrap();
    let e = verify_token(&jwt, &keys, &pki.td, NOW).unwrap_err();
    assert!(matches!(e, TxnError::Type(_)), "{e}");
}

#[test]
fn chain_of_two_hops_verifies() {
    let (_, keys, pki, token) = setup();
    let v = verify_token(&token, &keys, &pki.td, NOW).unwrap();
    let l1 = sign_link(&v, &svid(&pki, EDGE), &id(WEB), NOW).unwrap();
    let hops = verify_chain(&v, &[&l1], &id(EDGE), &id(WEB), &pki.ca_der, &pki.td, NOW).unwrap();
    assert_eq!(hops.len(), 1);
    let l2 = sign_link(&v, &svid(&pki, WEB), &id(ORDERS), NOW).unwrap();
    let hops = verify_chain(
        &v,
        &[&l1, &l2],
        &id(WEB),
        &id(ORDERS),
        &pki.ca_der,
        &pki.td,
        NOW,
    )
    .unwrap();
    assert_eq!(
        hops[1],
        Hop {
            from: id(WEB),
            to: id(ORDERS)
        }
    );
}

#[test]
fn replay_from_outside_the_chain_is_refused() {
    let (_, keys, pki, token) = setup();
    let v = verify_token(&token, &keys, &pki.td, NOW).unwrap();
    let l1 = sign_link(&v, &svid(&pki, EDGE), &id(WEB), NOW).unwrap();
    // evil stole the token and the link and presents them itself.
    let e = verify_chain(&v, &[&l1], &id(EVIL), &id(WEB), &pki.ca_der, &pki.td, NOW).unwrap_err();
    assert!(e.to_string().contains("the last link is from spiffe://example.org/ns/shop/svc/edge but spiffe://example.org/ns/shop/svc/evil presented the token"), "{e}");
    // ... and adds its own hop: it never held the token.
    let l2 = sign_link(&v, &svid(&pki, EVIL), &id(ORDERS), NOW).unwrap();
    let e = verify_chain(
        &v,
        &[&l1, &l2],
        &id(EVIL),
        &id(ORDERS),
        &pki.ca_der,
        &pki.td,
        NOW,
    )
    .unwrap_err();
    assert!(e.to_string().contains("link 2 is from spiffe://example.org/ns/shop/svc/evil but the token was held by spiffe://example.org/ns/shop/svc/web"), "{e}");
    // ... or presents a legitimate chain to another callee.
    let e = verify_chain(
        &v,
        &[&l1],
        &id(EDGE),
        &id(ORDERS),
        &pki.ca_der,
        &pki.td,
        NOW,
    )
    .unwrap_err();
    assert!(e.to_string().contains("the last link is to"), "{e}");
    // No links at all.
    let e = verify_chain(&v, &[], &id(EDGE), &id(WEB), &pki.ca_der, &pki.td, NOW).unwrap_err();
    assert!(e.to_string().contains("no links"), "{e}");
}

#[test]
fn links_for_another_token_or_forged_are_refused() {
    let (service, keys, pki, token) = setup();
    let v = verify_token(&token, &keys, &pki.td, NOW).unwrap();
    let other = service
        .mint(
            &MintRequest {
                subject: "bob".into(),
                for_workload: id(EDGE),
                purpose: None,
                context: BTreeMap::new(),
                ttl: DEFAULT_TTL,
            },
            NOW,
        )
        .unwrap();
    let ov = verify_token(&other, &keys, &pki.td, NOW).unwrap();
    let l_other = sign_link(&ov, &svid(&pki, EDGE), &id(WEB), NOW).unwrap();
    let e = verify_chain(
        &v,
        &[&l_other],
        &id(EDGE),
        &id(WEB),
        &pki.ca_der,
        &pki.td,
        NOW,
    )
    .unwrap_err();
    assert!(e.to_string().contains("names another token"), "{e}");
    // A link signed by a CA of another trust domain.
    let foreign = new_pki("example.org");
    let l = sign_link(&v, &svid(&foreign, EDGE), &id(WEB), NOW).unwrap();
    let e = verify_chain(&v, &[&l], &id(EDGE), &id(WEB), &pki.ca_der, &pki.td, NOW).unwrap_err();
    assert!(e.to_string().contains("signer certificate"), "{e}");
    // A link whose claims were edited after signing.
    let l = sign_link(&v, &svid(&pki, EDGE), &id(WEB), NOW).unwrap();
    let mut parts: Vec<String> = l.split('.').map(str::to_owned).collect();
    let mut c = claims_of(&l);
    c["to"] = json!(ORDERS);
    parts[1] = B64URL.encode(c.to_string());
    let e = verify_chain(
        &v,
        &[&parts.join(".")],
        &id(EDGE),
        &id(ORDERS),
        &pki.ca_der,
        &pki.td,
        NOW,
    )
    .unwrap_err();
    assert!(e.to_string().contains("signature does not verify"), "{e}");
    // A link signed by web's key that claims to be from edge.
    let mut m = svid(&pki, WEB);
    m.spiffe_id = id(EDGE);
    let l = sign_link(&v, &m, &id(WEB), NOW).unwrap();
    let e = verify_chain(&v, &[&l], &id(EDGE), &id(WEB), &pki.ca_der, &pki.td, NOW).unwrap_err();
    assert!(
        e.to_string()
            .contains("is signed by spiffe://example.org/ns/shop/svc/web"),
        "{e}"
    );
}
