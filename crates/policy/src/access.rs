//! Service-access policy in Cedar: which workloads may call which methods of a service, and on
//! behalf of which users.
//!
//! The request a policy sees:
//!
//! - **principal** `Workload::"<SPIFFE ID>"`, with attributes `trust_domain`, and `namespace`
//!   and `service` when the ID has the form `/ns/<namespace>/svc/<service>`;
//! - **action** `Action::"GET"`, `"HEAD"`, `"POST"`, `"PUT"`, `"DELETE"`, `"PATCH"`, `"OPTIONS"`
//!   (all in `Action::"http"`), `Action::"grpc"` (also in `Action::"http"`), or
//!   `Action::"connect"` for a raw TCP connection;
//! - **resource** `Service::"<service>.<namespace>"` with attributes `namespace` and `name`;
//! - **context** `path` (normal form), `method`, `grpc_service` and `grpc_method` for gRPC, and
//!   `user` when the call carries a verified transaction token: `sub`, `txn`, `purpose` and the
//!   token's string-valued request context as `ctx`.
//!
//! A service no policy names (by `resource == Service::"…"`, or with an unconstrained
//! resource) is open unless the global default-deny switch is on; a service that has any policy
//! is closed to everything the policies do not permit.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, PolicySet, Request, ResourceConstraint, RestrictedExpression,
};
use ringfence_core::SpiffeId;

use crate::request::{Method, NormalPath};

/// Largest policy text accepted.
pub const MAX_POLICY_LEN: usize = 1024 * 1024;

/// Why a policy cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The Cedar text does not parse.
    #[error("service-access policy does not parse: {0}")]
    Parse(String),
    /// Templates need linking, which service-access policy does not use.
    #[error("service-access policy may not contain templates (found {0})")]
    Template(String),
    /// Too large.
    #[error("service-access policy is larger than {MAX_POLICY_LEN} bytes")]
    TooLarge,
    /// A service name is not `<service>.<namespace>`.
    #[error("service name {0:?} is not <service>.<namespace>")]
    ServiceName(String),
}

/// What happens to a request the policy denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Refuse it.
    #[default]
    Enforce,
    /// Let it through and record that it would have been refused.
    DryRun,
}

/// A called service: `<name>.<namespace>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceName {
    name: String,
    namespace: String,
}

impl ServiceName {
    /// Parses `<service>.<namespace>`; both parts are lower-case DNS labels.
    pub fn parse(s: &str) -> Result<Self, PolicyError> {
        let label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        match s.split_once('.') {
            Some((n, ns)) if label(n) && label(ns) => Ok(Self {
                name: n.to_owned(),
                namespace: ns.to_owned(),
            }),
            _ => Err(PolicyError::ServiceName(s.chars().take(80).collect())),
        }
    }

    /// The service of a workload ID `/ns/<namespace>/svc/<service>`.
    pub fn of(id: &SpiffeId) -> Option<Self> {
        let segs: Vec<&str> = id.segments().collect();
        match segs.as_slice() {
            ["ns", ns, "svc", n] => Self::parse(&format!("{n}.{ns}")).ok(),
            _ => None,
        }
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The service's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
}

impl std::fmt::Display for ServiceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.name, self.namespace)
    }
}

/// What is being asked of the service.
#[derive(Debug, Clone)]
pub enum Action<'a> {
    /// An HTTP request.
    Http {
        /// Its method.
        method: Method,
        /// Its normal path.
        path: &'a NormalPath,
    },
    /// A gRPC call (an HTTP/2 POST to `/<service>/<method>`).
    Grpc {
        /// Its normal path.
        path: &'a NormalPath,
        /// The gRPC service.
        service: &'a str,
        /// The gRPC method.
        method: &'a str,
    },
    /// A raw TCP connection.
    Connect,
}

impl Action<'_> {
    fn id(&self) -> &'static str {
        match self {
            Self::Http { method, .. } => method.as_str(),
            Self::Grpc { .. } => "grpc",
            Self::Connect => "connect",
        }
    }

    /// How the action reads in logs: `GET /orders`, `grpc /pkg.S/M`, `connect`.
    pub fn describe(&self) -> String {
        match self {
            Self::Http { method, path } => format!("{method} {path}"),
            Self::Grpc { path, .. } => format!("grpc {path}"),
            Self::Connect => "connect".into(),
        }
    }
}

/// The end user a call is made for, from a verified transaction token.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserContext {
    /// The user (`sub`).
    pub subject: String,
    /// The transaction (`txn`).
    pub txn: String,
    /// The token's purpose (`purp`), if any.
    pub purpose: Option<String>,
    /// The token's request context, string values only.
    pub ctx: BTreeMap<String, String>,
}

/// One request to decide.
#[derive(Debug, Clone)]
pub struct AccessRequest<'a> {
    /// The calling workload (from its verified certificate).
    pub caller: &'a SpiffeId,
    /// The called service.
    pub callee: &'a ServiceName,
    /// What it asks.
    pub action: Action<'a>,
    /// The user it acts for, if the call carries a verified token.
    pub user: Option<&'a UserContext>,
}

/// The outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request goes through.
    pub allowed: bool,
    /// Whether the policy itself denied it (in dry-run the request still goes through).
    pub denied_by_policy: bool,
    /// Why, in words: the policies that decided, or the default that applied.
    pub reason: String,
}

/// A loaded service-access policy.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    set: PolicySet,
    /// Services some policy names exactly.
    named: HashSet<String>,
    /// Whether some policy applies to every service (resource unconstrained or by type).
    covers_all: bool,
    /// Each policy's `@id("…")`, read once (looking it up parses the key every time).
    labels: HashMap<String, String>,
    /// The entities of recent (caller, callee, action) triples: they follow from the names
    /// alone, and building them (with Cedar's transitive closure) is most of a decision.
    entities: EntityCache,
    mode: Mode,
    default_deny: bool,
}

type EntityKey = (String, String, &'static str);

/// A bounded cache of built entity sets; a clone starts empty.
#[derive(Debug, Default)]
struct EntityCache(std::sync::Mutex<HashMap<EntityKey, Arc<Entities>>>);

/// Entries kept before the cache starts over.
const ENTITY_CACHE_MAX: usize = 4096;

impl Clone for EntityCache {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl EntityCache {
    fn get(&self, key: &EntityKey) -> Option<Arc<Entities>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    fn put(&self, key: EntityKey, value: Arc<Entities>) {
        let mut m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if m.len() >= ENTITY_CACHE_MAX {
            m.clear();
        }
        m.insert(key, value);
    }
}

/// The entity types, parsed once: Cedar's parser is far too slow to run on every request.
static TYPES: std::sync::LazyLock<[(&str, EntityTypeName); 3]> = std::sync::LazyLock::new(|| {
    #[expect(clippy::expect_used, reason = "constant type names parse")]
    let t = |n: &'static str| {
        (
            n,
            EntityTypeName::from_str(n).expect("constant entity type name"),
        )
    };
    [t("Workload"), t("Service"), t("Action")]
});

fn uid(ty: &str, id: &str) -> EntityUid {
    let ty = TYPES.iter().find(|(n, _)| *n == ty).map(|(_, t)| t.clone());
    #[expect(
        clippy::expect_used,
        reason = "uid is only called with the types above"
    )]
    let ty = ty.expect("one of the entity types");
    EntityUid::from_type_name_and_id(ty, EntityId::new(id))
}

impl AccessPolicy {
    /// Reads Cedar policy text.
    pub fn parse(text: &str, mode: Mode, default_deny: bool) -> Result<Self, PolicyError> {
        if text.len() > MAX_POLICY_LEN {
            return Err(PolicyError::TooLarge);
        }
        let set = PolicySet::from_str(text).map_err(|e| PolicyError::Parse(format!("{e:?}")))?;
        if let Some(t) = set.templates().next() {
            return Err(PolicyError::Template(t.id().to_string()));
        }
        let mut named = HashSet::new();
        let mut covers_all = false;
        let mut labels = HashMap::new();
        for p in set.policies() {
            if let Some(label) = p.annotation("id") {
                labels.insert(p.id().to_string(), label.to_owned());
            }
            match p.resource_constraint() {
                ResourceConstraint::Eq(u) if u.type_name().to_string() == "Service" => {
                    named.insert(u.id().unescaped().to_owned());
                }
                _ => covers_all = true,
            }
        }
        Ok(Self {
            set,
            named,
            covers_all,
            labels,
            entities: EntityCache::default(),
            mode,
            default_deny,
        })
    }

    /// A policy with no rules: everything is open unless `default_deny`.
    pub fn empty(mode: Mode, default_deny: bool) -> Self {
        Self {
            set: PolicySet::new(),
            named: HashSet::new(),
            covers_all: false,
            labels: HashMap::new(),
            entities: EntityCache::default(),
            mode,
            default_deny,
        }
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Whether some policy applies to `service`.
    pub fn governs(&self, service: &ServiceName) -> bool {
        self.covers_all || self.named.contains(&service.to_string())
    }

    /// Decides `req`.
    pub fn decide(&self, req: &AccessRequest<'_>) -> Decision {
        self.decide_with(req, false)
    }

    /// Decides an egress connection from the local workload to a non-mesh destination named
    /// `req.callee`: like [`decide`](Self::decide), but a destination no policy names is
    /// closed whatever the default-deny switch says. Egress is open only where permitted.
    pub fn decide_egress(&self, req: &AccessRequest<'_>) -> Decision {
        self.decide_with(req, true)
    }

    fn decide_with(&self, req: &AccessRequest<'_>, closed: bool) -> Decision {
        // Egress opens only for a destination a policy names exactly: a policy over every
        // resource (`resource` unconstrained) governs services, not the way out.
        let governed = if closed {
            self.named.contains(&req.callee.to_string())
        } else {
            self.governs(req.callee)
        };
        let (policy_allows, reason) = if governed {
            self.evaluate(req)
        } else if closed {
            (
                false,
                format!(
                    "no service-access policy permits egress to {}: egress is closed unless permitted",
                    req.callee
                ),
            )
        } else if self.default_deny {
            (
                false,
                format!(
                    "no service-access policy names {} and default-deny is on",
                    req.callee
                ),
            )
        } else {
            (
                true,
                format!("no service-access policy names {}: open", req.callee),
            )
        };
        let denied = !policy_allows;
        let allowed = policy_allows || self.mode == Mode::DryRun;
        let reason = if denied && self.mode == Mode::DryRun {
            format!("dry-run, would deny: {reason}")
        } else {
            reason
        };
        Decision {
            allowed,
            denied_by_policy: denied,
            reason,
        }
    }

    fn evaluate(&self, req: &AccessRequest<'_>) -> (bool, String) {
        match self.cedar_request(req) {
            Ok((request, entities)) => {
                let response = Authorizer::new().is_authorized(&request, &self.set, &entities);
                let ids: Vec<String> = response
                    .diagnostics()
                    .reason()
                    .map(|id| self.label(id))
                    .collect();
                let errors: Vec<String> = response
                    .diagnostics()
                    .errors()
                    .map(|e| e.to_string())
                    .collect();
                match response.decision() {
                    CedarDecision::Allow => (true, format!("permitted by {}", ids.join(", "))),
                    CedarDecision::Deny if !ids.is_empty() => {
                        (false, format!("forbidden by {}", ids.join(", ")))
                    }
                    CedarDecision::Deny if !errors.is_empty() => (
                        false,
                        format!(
                            "no policy permits {} to {} {} (policy errors: {})",
                            req.caller,
                            req.action.describe(),
                            req.callee,
                            errors.join("; ")
                        ),
                    ),
                    CedarDecision::Deny => (
                        false,
                        format!(
                            "no policy permits {} to {} on {}",
                            req.caller,
                            req.action.describe(),
                            req.callee
                        ),
                    ),
                }
            }
            Err(e) => (false, format!("request could not be evaluated: {e}")),
        }
    }

    /// A policy's `@id("…")` annotation, or Cedar's id for it.
    fn label(&self, id: &cedar_policy::PolicyId) -> String {
        let id = id.to_string();
        self.labels.get(&id).cloned().unwrap_or(id)
    }

    fn cedar_request(&self, req: &AccessRequest<'_>) -> Result<(Request, Arc<Entities>), String> {
        let principal = uid("Workload", req.caller.as_str());
        let resource = uid("Service", &req.callee.to_string());
        let action = uid("Action", req.action.id());
        let key = (
            req.caller.as_str().to_owned(),
            req.callee.to_string(),
            req.action.id(),
        );
        let entities = match self.entities.get(&key) {
            Some(e) => e,
            None => {
                let e = Arc::new(entities_of(req, &principal, &resource, &action)?);
                self.entities.put(key, Arc::clone(&e));
                e
            }
        };
        let s = |v: &str| RestrictedExpression::new_string(v.to_owned());
        let mut ctx: Vec<(String, RestrictedExpression)> = Vec::new();
        match &req.action {
            Action::Http { method, path } => {
                ctx.push(("method".into(), s(method.as_str())));
                ctx.push(("path".into(), s(path.as_str())));
            }
            Action::Grpc {
                path,
                service,
                method,
            } => {
                ctx.push(("method".into(), s("POST")));
                ctx.push(("path".into(), s(path.as_str())));
                ctx.push(("grpc_service".into(), s(service)));
                ctx.push(("grpc_method".into(), s(method)));
            }
            Action::Connect => {}
        }
        if let Some(u) = req.user {
            let mut fields = vec![
                ("sub".to_owned(), s(&u.subject)),
                ("txn".to_owned(), s(&u.txn)),
            ];
            if let Some(p) = &u.purpose {
                fields.push(("purpose".into(), s(p)));
            }
            let c = RestrictedExpression::new_record(u.ctx.iter().map(|(k, v)| (k.clone(), s(v))))
                .map_err(|e| e.to_string())?;
            fields.push(("ctx".into(), c));
            ctx.push((
                "user".into(),
                RestrictedExpression::new_record(fields).map_err(|e| e.to_string())?,
            ));
        }
        let context = Context::from_pairs(ctx).map_err(|e| e.to_string())?;
        let request =
            Request::new(principal, action, resource, context, None).map_err(|e| e.to_string())?;
        Ok((request, entities))
    }
}

/// The entities of one request: the caller with its attributes, the called service with its
/// own, and the action under `Action::"http"` (raw TCP `connect` stands alone). They follow
/// from the names alone, which is what lets [`EntityCache`] keep them.
fn entities_of(
    req: &AccessRequest<'_>,
    principal: &EntityUid,
    resource: &EntityUid,
    action: &EntityUid,
) -> Result<Entities, String> {
    let mut pattrs = HashMap::from([(
        "trust_domain".to_owned(),
        RestrictedExpression::new_string(req.caller.trust_domain_str().to_owned()),
    )]);
    if let Some(s) = ServiceName::of(req.caller) {
        pattrs.insert(
            "namespace".into(),
            RestrictedExpression::new_string(s.namespace),
        );
        pattrs.insert("service".into(), RestrictedExpression::new_string(s.name));
    }
    let rattrs = HashMap::from([
        (
            "namespace".to_owned(),
            RestrictedExpression::new_string(req.callee.namespace.clone()),
        ),
        (
            "name".to_owned(),
            RestrictedExpression::new_string(req.callee.name.clone()),
        ),
    ]);
    let http = uid("Action", "http");
    let parents = if matches!(req.action, Action::Connect) {
        HashSet::new()
    } else {
        HashSet::from([http.clone()])
    };
    let list = vec![
        Entity::new(principal.clone(), pattrs, HashSet::new()).map_err(|e| e.to_string())?,
        Entity::new(resource.clone(), rattrs, HashSet::new()).map_err(|e| e.to_string())?,
        Entity::new_no_attrs(http, HashSet::new()),
        Entity::new_no_attrs(action.clone(), parents),
    ];
    Entities::from_entities(list, None).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
