use super::*;
use crate::request::normalize_target;

const POLICY: &str = r#"
@id("web-reads-orders")
permit(
    principal == Workload::"spiffe://example.org/ns/shop/svc/web",
    action in [Action::"GET", Action::"HEAD"],
    resource == Service::"orders.shop"
) when { context.path like "/orders*" };

@id("checkout-needs-user")
permit(
    principal == Workload::"spiffe://example.org/ns/shop/svc/checkout",
    action == Action::"POST",
    resource == Service::"orders.shop"
) when { context has user && context.user.sub like "*" && context.path == "/orders" };

@id("no-admin")
forbid(principal, action, resource == Service::"orders.shop")
    when { context has path && context.path like "/admin*" };

@id("grpc-get")
permit(
    principal is Workload,
    action == Action::"grpc",
    resource == Service::"orders.shop"
) when { principal has namespace && principal.namespace == "shop" && context.grpc_method == "Get" };
"#;

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn decide(p: &AccessPolicy, caller: &str, callee: &str, method: Method, path: &str) -> Decision {
    let path = normalize_target(path).unwrap().path;
    let caller = id(caller);
    let callee = ServiceName::parse(callee).unwrap();
    p.decide(&AccessRequest {
        caller: &caller,
        callee: &callee,
        action: Action::Http {
            method,
            path: &path,
        },
        user: None,
    })
}

const WEB: &str = "spiffe://example.org/ns/shop/svc/web";
const CHECKOUT: &str = "spiffe://example.org/ns/shop/svc/checkout";

#[test]
fn permits_what_a_policy_names() {
    let p = AccessPolicy::parse(POLICY, Mode::Enforce, false).unwrap();
    let d = decide(&p, WEB, "orders.shop", Method::Get, "/orders/1");
    assert!(d.allowed, "{d:?}");
    assert!(d.reason.contains("web-reads-orders"), "{d:?}");
}

#[test]
fn a_governed_service_is_closed_by_default() {
    let p = AccessPolicy::parse(POLICY, Mode::Enforce, false).unwrap();
    let d = decide(&p, WEB, "orders.shop", Method::Delete, "/orders/1");
    assert!(!d.allowed && d.denied_by_policy);
    assert!(d.reason.contains("no policy permits"), "{d:?}");
    let d = decide(
        &p,
        "spiffe://example.org/ns/shop/svc/other",
        "orders.shop",
        Method::Get,
        "/orders",
    );
    assert!(!d.allowed);
}

#[test]
fn forbid_wins() {
    let p = AccessPolicy::parse(
        &format!("{POLICY}\npermit(principal, action, resource == Service::\"orders.shop\");"),
        Mode::Enforce,
        false,
    )
    .unwrap();
    let d = decide(&p, WEB, "orders.shop", Method::Get, "/admin");
    assert!(!d.allowed);
    assert!(d.reason.contains("forbidden by no-admin"), "{d:?}");
}

#[test]
fn ungoverned_service_is_open_unless_default_deny() {
    let open = AccessPolicy::parse(POLICY, Mode::Enforce, false).unwrap();
    let d = decide(&open, WEB, "stock.shop", Method::Get, "/");
    assert!(d.allowed && d.reason.contains("open"), "{d:?}");
    let closed = AccessPolicy::parse(POLICY, Mode::Enforce, true).unwrap();
    let d = decide(&closed, WEB, "stock.shop", Method::Get, "/");
    assert!(!d.allowed && d.reason.contains("default-deny"), "{d:?}");
    let d = decide(
        &AccessPolicy::empty(Mode::Enforce, true),
        WEB,
        "stock.shop",
        Method::Get,
        "/",
    );
    assert!(!d.allowed);
}

#[test]
fn an_unscoped_policy_governs_every_service() {
    let p = AccessPolicy::parse(
        r#"permit(principal == Workload::"spiffe://example.org/ns/shop/svc/web", action, resource);"#,
        Mode::Enforce,
        false,
    )
    .unwrap();
    assert!(decide(&p, WEB, "stock.shop", Method::Get, "/").allowed);
    assert!(!decide(&p, CHECKOUT, "stock.shop", Method::Get, "/").allowed);
}

#[test]
fn dry_run_admits_and_says_it_would_deny() {
    let p = AccessPolicy::parse(POLICY, Mode::DryRun, false).unwrap();
    let d = decide(&p, WEB, "orders.shop", Method::Delete, "/orders/1");
    assert!(d.allowed && d.denied_by_policy);
    assert!(d.reason.starts_with("dry-run, would deny"), "{d:?}");
}

#[test]
fn user_conditions() {
    let p = AccessPolicy::parse(POLICY, Mode::Enforce, false).unwrap();
    let caller = id(CHECKOUT);
    let callee = ServiceName::parse("orders.shop").unwrap();
    let path = normalize_target("/orders").unwrap().path;
    let action = Action::Http {
        method: Method::Post,
        path: &path,
    };
    let without = p.decide(&AccessRequest {
        caller: &caller,
        callee: &callee,
        action: action.clone(),
        user: None,
    });
    assert!(!without.allowed, "{without:?}");
    let user = UserContext {
        subject: "alice".into(),
        txn: "t1".into(),
        ..Default::default()
    };
    let with = p.decide(&AccessRequest {
        caller: &caller,
        callee: &callee,
        action,
        user: Some(&user),
    });
    assert!(with.allowed, "{with:?}");
}

#[test]
fn grpc_and_attributes() {
    let p = AccessPolicy::parse(POLICY, Mode::Enforce, false).unwrap();
    let callee = ServiceName::parse("orders.shop").unwrap();
    let path = normalize_target("/pkg.Orders/Get").unwrap().path;
    for (caller, ok) in [
        (WEB, true),
        ("spiffe://example.org/ns/evil/svc/web", false),
        ("spiffe://example.org/user/alice", false),
    ] {
        let caller = id(caller);
        let d = p.decide(&AccessRequest {
            caller: &caller,
            callee: &callee,
            action: Action::Grpc {
                path: &path,
                service: "pkg.Orders",
                method: "Get",
            },
            user: None,
        });
        assert_eq!(d.allowed, ok, "{caller}: {d:?}");
    }
}

#[test]
fn bad_policies_are_refused() {
    assert!(matches!(
        AccessPolicy::parse("permit(", Mode::Enforce, false),
        Err(PolicyError::Parse(_))
    ));
    assert!(matches!(
        AccessPolicy::parse(
            "permit(principal == ?principal, action, resource);",
            Mode::Enforce,
            false
        ),
        Err(PolicyError::Template(_))
    ));
    assert!(ServiceName::parse("Orders.shop").is_err());
    assert!(ServiceName::parse("orders").is_err());
    assert!(ServiceName::parse("a.b.c").is_err());
}

#[test]
fn egress_is_closed_unless_a_policy_permits_it() {
    let text = r#"
@id("web-to-db")
permit(
    principal == Workload::"spiffe://example.org/ns/shop/svc/web",
    action == Action::"connect",
    resource == Service::"postgres.external"
);
"#;
    let p = AccessPolicy::parse(text, Mode::Enforce, false).unwrap();
    let connect = |caller: &str, to: &str| {
        let caller = id(caller);
        let to = ServiceName::parse(to).unwrap();
        p.decide_egress(&AccessRequest {
            caller: &caller,
            callee: &to,
            action: Action::Connect,
            user: None,
        })
    };
    let d = connect(WEB, "postgres.external");
    assert!(d.allowed, "{d:?}");
    assert!(d.reason.contains("web-to-db"), "{d:?}");
    let d = connect(CHECKOUT, "postgres.external");
    assert!(!d.allowed, "{d:?}");
    // A destination no policy names: open for service calls, closed for egress.
    let d = connect(WEB, "redis.external");
    assert!(!d.allowed, "{d:?}");
    assert_eq!(
        d.reason,
        "no service-access policy permits egress to redis.external: egress is closed unless permitted"
    );
    let caller = id(WEB);
    let to = ServiceName::parse("redis.external").unwrap();
    let open = p.decide(&AccessRequest {
        caller: &caller,
        callee: &to,
        action: Action::Connect,
        user: None,
    });
    assert!(open.allowed, "{open:?}");
    // A policy over every resource does not open egress: only an exact name does.
    let any = AccessPolicy::parse(
        r#"permit(principal, action, resource);"#,
        Mode::Enforce,
        false,
    )
    .unwrap();
    let d = any.decide_egress(&AccessRequest {
        caller: &caller,
        callee: &to,
        action: Action::Connect,
        user: None,
    });
    assert!(!d.allowed, "{d:?}");
    assert!(
        d.reason.contains("egress is closed unless permitted"),
        "{d:?}"
    );
    // A permit for HTTP does not open raw TCP.
    let http = AccessPolicy::parse(
        r#"permit(principal, action in Action::"http", resource == Service::"postgres.external");"#,
        Mode::Enforce,
        false,
    )
    .unwrap();
    let to = ServiceName::parse("postgres.external").unwrap();
    let d = http.decide_egress(&AccessRequest {
        caller: &caller,
        callee: &to,
        action: Action::Connect,
        user: None,
    });
    assert!(!d.allowed, "{d:?}");
}
