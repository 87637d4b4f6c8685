//! The verdict: a pure function of (policy set, job, attestations, time, request) to admit or
//! deny, with every unmet requirement named — which requirement, which attestation, why.

use std::fmt;
use std::time::Duration;

use base64::Engine;
use ringfence_core::UnixTime;
use ringfence_provenance::dsse::{self, Envelope};
use ringfence_provenance::review::{self, Review};
use ringfence_provenance::slsa::{self, Provenance, Source};
use ringfence_provenance::statement::{self, Sha256, Statement};
use serde::{Deserialize, Serialize};

use crate::policy::{KeyGroup, Mode, Policy, PolicySet, glob};

/// How far in the future an attestation's time may be (clock skew between machines).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);
/// Shortest break-glass justification accepted, in characters.
pub const MIN_JUSTIFICATION: usize = 10;

/// A job as admission sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    /// The job's name.
    pub name: String,
    /// Namespace of its service identity.
    pub namespace: String,
    /// Service identity.
    pub service: String,
    /// Environment (`production`, `staging`, ...).
    pub environment: String,
    /// `repository@sha256:<hex>` (or bare `sha256:<hex>`); a tag is refused.
    pub image: String,
    /// SHA-256 of the job's configuration as submitted (args, env, flags).
    pub config_digest: Sha256,
}

/// An attestation as presented: where it came from (a file name, a store key) and the envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attestation {
    /// A label for reasons.
    pub source: String,
    /// The envelope.
    pub envelope: Envelope,
}

/// A normal deploy, or break-glass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Request {
    /// Normal.
    Normal,
    /// Bypass enforcement, with a justification.
    BreakGlass {
        /// Why.
        justification: String,
        /// Who.
        by: String,
    },
}

/// The name serde gives a unit variant (`config-reviewed`, `break-glass`).
fn serde_name(v: &impl Serialize) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The requirement a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Requirement {
    /// Every service has a policy.
    Policy,
    /// The image is named by digest.
    ImageDigest,
    /// The image's repository or digest is allowed.
    ImageAllowed,
    /// A provenance from a trusted builder.
    Provenance,
    /// The provenance's builder id.
    Builder,
    /// Source repository.
    SourceRepository,
    /// Source ref.
    SourceRef,
    /// The attestation covers this image.
    Subject,
    /// A code review.
    Review,
    /// Reviewers other than the author.
    Reviewers,
    /// The owner approved.
    OwnerApproval,
    /// The reviewed commit is the built one.
    ReviewedCommit,
    /// The job's configuration was reviewed.
    ConfigReviewed,
    /// A further attestation.
    Attestation,
    /// Attestation age.
    MaxAge,
    /// Attestation time not in the future.
    NotYetValid,
    /// The request itself (break-glass without justification).
    Request,
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&serde_name(self))
    }
}

/// One unmet requirement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Which requirement.
    pub requirement: Requirement,
    /// Which attestation, when one is at fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<String>,
    /// Why.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.attestation {
            Some(a) => write!(f, "[{}] {a}: {}", self.requirement, self.message),
            None => write!(f, "[{}] {}", self.requirement, self.message),
        }
    }
}

/// On what grounds a job was admitted or denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Basis {
    /// Meets its policy.
    Compliant,
    /// Its policy is an explicit allow-all.
    AllowAll,
    /// Its policy opts out of enforcement (findings recorded).
    OptOut,
    /// Its policy is dry-run (findings recorded as would-deny).
    DryRun,
    /// Break-glass bypassed enforcement.
    BreakGlass,
    /// Denied.
    Denied,
}

impl fmt::Display for Basis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&serde_name(self))
    }
}

/// The verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    /// Admit or not.
    pub admit: bool,
    /// Why.
    pub basis: Basis,
    /// The governing policy's name, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Its exact version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_digest: Option<Sha256>,
    /// Unmet requirements (for an admit: what would have been refused).
    pub findings: Vec<Finding>,
    /// When the first attestation relied on ages out under the policy's maxAge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<UnixTime>,
    /// The justification of a break-glass or opt-out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub justification: Option<String>,
}

impl Verdict {
    /// True when the job meets its policy (compliant or allow-all).
    pub fn conforms(&self) -> bool {
        matches!(self.basis, Basis::Compliant | Basis::AllowAll)
    }
}

struct Ctx<'a> {
    policy: &'a Policy,
    job: &'a Job,
    now: UnixTime,
    findings: Vec<Finding>,
    valid_until: Option<UnixTime>,
}

impl Ctx<'_> {
    fn add(&mut self, requirement: Requirement, attestation: Option<&str>, message: String) {
        self.findings.push(Finding {
            requirement,
            attestation: attestation.map(str::to_owned),
            message,
        });
    }

    /// Checks an attestation's time against maxAge and the clock; records when it ages out.
    /// A failure names the attestation, for the candidate's list of failures.
    fn check_time(&mut self, what: &str, att: &str, t: Option<UnixTime>) -> Result<(), Failure> {
        let fail = |r: Requirement, m: String| (r, att.to_owned(), m);
        let Some(t) = t else {
            if self.policy.spec().max_age.is_some() {
                return Err(fail(
                    Requirement::MaxAge,
                    format!("the {what} carries no time, and the policy sets a maximum age"),
                ));
            }
            return Ok(());
        };
        if t > self.now.saturating_add(MAX_CLOCK_SKEW) {
            return Err(fail(
                Requirement::NotYetValid,
                format!(
                    "the {what} is dated {} — in the future (now {})",
                    slsa::format_time(t),
                    slsa::format_time(self.now)
                ),
            ));
        }
        if let Some(max) = self.policy.spec().max_age {
            let until = t.saturating_add(max);
            if until <= self.now {
                return Err(fail(
                    Requirement::MaxAge,
                    format!(
                        "the {what} is dated {}, older than the policy's maximum age {}",
                        slsa::format_time(t),
                        humantime::format_duration(max)
                    ),
                ));
            }
            self.valid_until = Some(self.valid_until.map_or(until, |v| v.min(until)));
        }
        Ok(())
    }
}

/// An image reference split into repository and digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The repository, without tag (`None` for a bare digest).
    pub repository: Option<String>,
    /// The manifest digest.
    pub digest: Sha256,
}

/// Parses `repo[:tag]@sha256:<hex>` or `sha256:<hex>`. A reference without a digest is
/// refused: a tag can be moved to other content after the verdict.
pub fn parse_image(image: &str) -> Result<ImageRef, String> {
    let (repo, digest) = match image.rsplit_once('@') {
        Some((repo, digest)) => (Some(repo), digest),
        None if image.starts_with("sha256:") => (None, image),
        None => {
            return Err(format!(
                "image {image:?} is named by tag; name it by manifest digest (repository@sha256:...)"
            ));
        }
    };
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("image {image:?}: digest {digest:?} is not sha256:<hex>"))?;
    let digest = Sha256::parse(hex).map_err(|e| format!("image {image:?}: {e}"))?;
    let repository = repo.map(|r| {
        // Drop a tag (a ':' in the last path segment; a registry port is in the first).
        match r.rsplit_once('/') {
            Some((head, last)) => match last.split_once(':') {
                Some((name, _tag)) => format!("{head}/{name}"),
                None => r.to_owned(),
            },
            None => r.split_once(':').map_or(r, |(n, _)| n).to_owned(),
        }
    });
    if repository.as_deref() == Some("") {
        return Err(format!("image {image:?} has an empty repository"));
    }
    Ok(ImageRef { repository, digest })
}

/// A decoded (not yet verified) view of an envelope, for routing only.
struct Peeked<'a> {
    att: &'a Attestation,
    payload: Vec<u8>,
    predicate_type: String,
}

#[derive(Deserialize)]
struct PeekStatement {
    #[serde(rename = "predicateType", default)]
    predicate_type: String,
}

fn peek(att: &Attestation) -> Result<Peeked<'_>, String> {
    if att.envelope.payload_type != statement::PAYLOAD_TYPE {
        return Err(format!(
            "payload type {:?} is not {}",
            att.envelope.payload_type,
            statement::PAYLOAD_TYPE
        ));
    }
    let payload = base64::engine::general_purpose::STANDARD
        .decode(&att.envelope.payload)
        .map_err(|_| "payload is not base64".to_owned())?;
    let p: PeekStatement =
        serde_json::from_slice(&payload).map_err(|e| format!("payload is not JSON: {e}"))?;
    Ok(Peeked {
        att,
        payload,
        predicate_type: p.predicate_type,
    })
}

fn verify_with(att: &Peeked<'_>, keys: &KeyGroup) -> Result<Statement, String> {
    let v = dsse::verify_prepared(
        &att.att.envelope,
        Some(att.payload.clone()),
        statement::PAYLOAD_TYPE,
        &keys.keys,
        keys.threshold,
    )
    .map_err(|e| e.to_string())?;
    Statement::from_envelope(&v).map_err(|e| e.to_string())
}

/// Evaluates a job. Pure: no I/O, no clock but `now`.
pub fn evaluate(
    policies: &PolicySet,
    job: &Job,
    attestations: &[Attestation],
    now: UnixTime,
    request: &Request,
) -> Verdict {
    let break_glass = match request {
        Request::Normal => None,
        Request::BreakGlass { justification, by } => {
            if justification.trim().chars().count() < MIN_JUSTIFICATION || by.trim().is_empty() {
                return Verdict {
                    admit: false,
                    basis: Basis::Denied,
                    policy: None,
                    policy_digest: None,
                    findings: vec![Finding {
                        requirement: Requirement::Request,
                        attestation: None,
                        message: format!(
                            "break-glass needs a justification of at least {MIN_JUSTIFICATION} characters and who asks"
                        ),
                    }],
                    valid_until: None,
                    justification: None,
                };
            }
            Some(justification.clone())
        }
    };
    let Some(policy) = policies.find(&job.namespace, &job.service, &job.environment) else {
        let findings = vec![Finding {
            requirement: Requirement::Policy,
            attestation: None,
            message: format!(
                "no service policy governs {}/{} in {}; every service needs one (allowAll for services without sensitive data)",
                job.namespace, job.service, job.environment
            ),
        }];
        return finish(
            None,
            Mode::Enforce,
            findings,
            None,
            break_glass,
            false,
            None,
        );
    };
    let spec = policy.spec();
    if spec.allow_all.is_some() {
        return Verdict {
            admit: true,
            basis: Basis::AllowAll,
            policy: Some(policy.name().to_owned()),
            policy_digest: Some(policy.digest.clone()),
            findings: Vec::new(),
            valid_until: None,
            justification: spec.allow_all.as_ref().map(|a| a.justification.clone()),
        };
    }
    let mut ctx = Ctx {
        policy,
        job,
        now,
        findings: Vec::new(),
        valid_until: None,
    };
    check(&mut ctx, attestations);
    let opt_out = spec.opt_out.as_ref().map(|o| o.justification.clone());
    let Ctx {
        findings,
        valid_until,
        ..
    } = ctx;
    finish(
        Some(policy),
        spec.mode,
        findings,
        valid_until,
        break_glass,
        opt_out.is_some(),
        opt_out,
    )
}

fn finish(
    policy: Option<&Policy>,
    mode: Mode,
    findings: Vec<Finding>,
    valid_until: Option<UnixTime>,
    break_glass: Option<String>,
    opt_out: bool,
    opt_out_justification: Option<String>,
) -> Verdict {
    let (admit, basis, justification) = if findings.is_empty() {
        (true, Basis::Compliant, None)
    } else if let Some(j) = break_glass {
        (true, Basis::BreakGlass, Some(j))
    } else if opt_out {
        (true, Basis::OptOut, opt_out_justification)
    } else if mode == Mode::DryRun {
        (true, Basis::DryRun, None)
    } else {
        (false, Basis::Denied, None)
    };
    Verdict {
        admit,
        basis,
        policy: policy.map(|p| p.name().to_owned()),
        policy_digest: policy.map(|p| p.digest.clone()),
        findings,
        valid_until,
        justification,
    }
}

fn check(ctx: &mut Ctx<'_>, attestations: &[Attestation]) {
    let policy = ctx.policy;
    let spec = policy.spec();
    let image = match parse_image(&ctx.job.image) {
        Ok(i) => i,
        Err(e) => {
            ctx.add(Requirement::ImageDigest, None, e);
            return;
        }
    };
    let images = &spec.images;
    if !images.repositories.is_empty() || !policy.digests.is_empty() {
        let by_digest = policy.digests.contains(&image.digest);
        let by_repo = image
            .repository
            .as_deref()
            .is_some_and(|r| images.repositories.iter().any(|g| glob(g, r)));
        if !by_digest && !by_repo {
            let msg = match &image.repository {
                Some(r) => format!(
                    "repository {r:?} matches none of {:?} and digest {} is not listed",
                    images.repositories, image.digest
                ),
                None => format!(
                    "image {} has no repository and its digest is not listed",
                    image.digest
                ),
            };
            ctx.add(Requirement::ImageAllowed, None, msg);
        }
    }

    let mut peeked = Vec::with_capacity(attestations.len());
    let mut unreadable: Vec<String> = Vec::new();
    for att in attestations {
        match peek(att) {
            Ok(p) => peeked.push(p),
            Err(e) => unreadable.push(format!("{}: {e}", att.source)),
        }
    }
    let present = |peeked: &[Peeked<'_>]| -> String {
        let mut types: Vec<&str> = peeked.iter().map(|p| p.predicate_type.as_str()).collect();
        types.sort_unstable();
        types.dedup();
        let mut s = if types.is_empty() {
            "no readable attestation was given".to_owned()
        } else {
            format!("present: {}", types.join(", "))
        };
        if !unreadable.is_empty() {
            s.push_str(&format!("; unreadable: {}", unreadable.join("; ")));
        }
        s
    };

    let source = if spec.builders.is_empty() {
        None
    } else {
        check_provenance(ctx, &image, &peeked, &present(&peeked))
    };
    if let Some(keys) = &policy.review_keys {
        check_review(
            ctx,
            &image,
            source.as_ref(),
            keys,
            &peeked,
            &present(&peeked),
        );
    }
    for (req, keys) in spec.attestations.iter().zip(&policy.attestation_keys) {
        let candidates: Vec<&Peeked<'_>> = peeked
            .iter()
            .filter(|p| p.predicate_type == req.predicate_type)
            .collect();
        if candidates.is_empty() {
            let msg = format!(
                "no {} attestation ({})",
                req.predicate_type,
                present(&peeked)
            );
            ctx.add(Requirement::Attestation, None, msg);
            continue;
        }
        let mut failures = Vec::new();
        let mut ok = false;
        for c in candidates {
            match verify_with(c, keys) {
                Ok(stmt)
                    if stmt.predicate_type() == req.predicate_type
                        && stmt.covers(&image.digest) =>
                {
                    ok = true;
                    break;
                }
                Ok(_) => failures.push((
                    Requirement::Subject,
                    c.att.source.clone(),
                    format!("attests another image, not {}", image.digest),
                )),
                Err(e) => failures.push((Requirement::Attestation, c.att.source.clone(), e)),
            }
        }
        if !ok {
            for (r, a, m) in failures {
                ctx.add(r, Some(&a), format!("{}: {m}", req.predicate_type));
            }
        }
    }
}

type Failure = (Requirement, String, String);

fn check_provenance(
    ctx: &mut Ctx<'_>,
    image: &ImageRef,
    peeked: &[Peeked<'_>],
    present: &str,
) -> Option<Source> {
    let policy = ctx.policy;
    let spec = policy.spec();
    let candidates: Vec<&Peeked<'_>> = peeked
        .iter()
        .filter(|p| p.predicate_type == slsa::PREDICATE_TYPE)
        .collect();
    if candidates.is_empty() {
        ctx.add(
            Requirement::Provenance,
            None,
            format!(
                "no SLSA provenance ({}) attestation; {present}",
                slsa::PREDICATE_TYPE
            ),
        );
        return None;
    }
    let mut best: Option<Vec<Failure>> = None;
    for c in candidates {
        let name = c.att.source.clone();
        let mut fails: Vec<Failure> = Vec::new();
        // Which trusted builder's keys signed it?
        let mut signed_by = None;
        let mut sig_errors = Vec::new();
        for b in &policy.builders {
            match verify_with(c, &b.keys) {
                Ok(stmt) => {
                    signed_by = Some((b, stmt));
                    break;
                }
                Err(e) => sig_errors.push(format!("builder {}: {e}", b.id)),
            }
        }
        let Some((builder, stmt)) = signed_by else {
            fails.push((
                Requirement::Provenance,
                name,
                format!(
                    "not signed by a trusted builder ({})",
                    sig_errors.join("; ")
                ),
            ));
            keep_best(&mut best, fails);
            continue;
        };
        if !stmt.covers(&image.digest) {
            let covered: Vec<String> = stmt
                .subjects()
                .iter()
                .filter_map(|s| s.sha256.as_ref().map(ToString::to_string))
                .collect();
            fails.push((
                Requirement::Subject,
                name.clone(),
                format!(
                    "provenance is for another image ({}), not {}",
                    covered.join(", "),
                    image.digest
                ),
            ));
        }
        let prov = match Provenance::from_statement(&stmt) {
            Ok(p) => p,
            Err(e) => {
                fails.push((Requirement::Provenance, name, e.to_string()));
                keep_best(&mut best, fails);
                continue;
            }
        };
        if prov.builder_id != builder.id {
            let known = policy.builders.iter().any(|b| b.id == prov.builder_id);
            fails.push((
                Requirement::Builder,
                name.clone(),
                if known {
                    format!(
                        "builder id mismatch: signed with the keys of {} but names builder {}",
                        builder.id, prov.builder_id
                    )
                } else {
                    format!(
                        "untrusted builder id {:?} (signed with the keys of {})",
                        prov.builder_id, builder.id
                    )
                },
            ));
        }
        let need_source = !spec.source.repositories.is_empty() || !spec.source.refs.is_empty();
        match &prov.source {
            None if need_source || ctx.policy.review_keys.is_some() => fails.push((
                Requirement::SourceRepository,
                name.clone(),
                format!(
                    "provenance names no source repository, ref and commit (build type {})",
                    prov.build_type
                ),
            )),
            None => {}
            Some(src) => {
                if !spec.source.repositories.is_empty()
                    && !spec
                        .source
                        .repositories
                        .iter()
                        .any(|g| glob(g, &src.repository))
                {
                    fails.push((
                        Requirement::SourceRepository,
                        name.clone(),
                        format!(
                            "source repository {:?} is not allowed (allowed: {:?})",
                            src.repository, spec.source.repositories
                        ),
                    ));
                }
                if !spec.source.refs.is_empty()
                    && !spec.source.refs.iter().any(|g| glob(g, &src.git_ref))
                {
                    fails.push((
                        Requirement::SourceRef,
                        name.clone(),
                        format!(
                            "source ref {:?} is not allowed (allowed: {:?})",
                            src.git_ref, spec.source.refs
                        ),
                    ));
                }
            }
        }
        if fails.is_empty() {
            match ctx.check_time("provenance", &name, prov.finished_on) {
                Ok(()) => return prov.source,
                Err(f) => fails.push(f),
            }
        }
        keep_best(&mut best, fails);
    }
    for (r, a, m) in best.unwrap_or_default() {
        ctx.add(r, Some(&a), m);
    }
    None
}

/// Keeps the failing candidate with the fewest failures: the one closest to passing says most
/// precisely what is wrong.
fn keep_best(best: &mut Option<Vec<Failure>>, fails: Vec<Failure>) {
    match best {
        Some(b) if b.len() <= fails.len() => {}
        _ => *best = Some(fails),
    }
}

fn check_review(
    ctx: &mut Ctx<'_>,
    image: &ImageRef,
    source: Option<&Source>,
    keys: &KeyGroup,
    peeked: &[Peeked<'_>],
    present: &str,
) {
    let Some(rules) = ctx.policy.spec().review.as_ref() else {
        return;
    };
    let candidates: Vec<&Peeked<'_>> = peeked
        .iter()
        .filter(|p| p.predicate_type == review::PREDICATE_TYPE)
        .collect();
    if candidates.is_empty() {
        ctx.add(
            Requirement::Review,
            None,
            format!(
                "no code review ({}) attestation; {present}",
                review::PREDICATE_TYPE
            ),
        );
        return;
    }
    let has_builders = !ctx.policy.builders.is_empty();
    let mut best: Option<Vec<Failure>> = None;
    for c in candidates {
        let name = c.att.source.clone();
        let mut fails: Vec<Failure> = Vec::new();
        let r = match verify_with(c, keys).and_then(|s| {
            Review::from_statement(&s)
                .map(|r| (r, s))
                .map_err(|e| e.to_string())
        }) {
            Ok(r) => r,
            Err(e) => {
                fails.push((Requirement::Review, name, e));
                keep_best(&mut best, fails);
                continue;
            }
        };
        let (review, stmt) = r;
        let p = &review.predicate;
        match source {
            Some(src) => {
                if p.commit != src.commit {
                    fails.push((
                        Requirement::ReviewedCommit,
                        name.clone(),
                        format!(
                            "the review is of commit {}, but the image was built from {}",
                            p.commit, src.commit
                        ),
                    ));
                }
                if p.repository != src.repository {
                    fails.push((
                        Requirement::ReviewedCommit,
                        name.clone(),
                        format!(
                            "the review is in {}, but the image was built from {}",
                            p.repository, src.repository
                        ),
                    ));
                }
            }
            None if has_builders => {
                // The provenance failed; its findings already say why. The review cannot be tied
                // to the image without it.
                fails.push((
                    Requirement::ReviewedCommit,
                    name.clone(),
                    "no verified provenance names the built commit to match the review against"
                        .into(),
                ));
            }
            None => {
                if !stmt.covers(&image.digest) {
                    fails.push((
                        Requirement::Subject,
                        name.clone(),
                        format!(
                            "without a provenance requirement, the review must name the image {} among its subjects",
                            image.digest
                        ),
                    ));
                }
            }
        }
        let independent = review.independent_reviewers();
        if independent.len() < rules.min_reviewers {
            fails.push((
                Requirement::Reviewers,
                name.clone(),
                format!(
                    "{} approval(s) by someone other than the author {:?} ({}); {} required",
                    independent.len(),
                    p.author,
                    if independent.is_empty() {
                        "none".to_owned()
                    } else {
                        independent.join(", ")
                    },
                    rules.min_reviewers
                ),
            ));
        }
        if rules.owner_approval {
            match &p.owner_approval {
                None => fails.push((
                    Requirement::OwnerApproval,
                    name.clone(),
                    "no owner approval".into(),
                )),
                Some(o) if o.name.trim().is_empty() => fails.push((
                    Requirement::OwnerApproval,
                    name.clone(),
                    "the owner approval names nobody".into(),
                )),
                Some(o)
                    if review::same_person_key(&o.name) == review::same_person_key(&p.author) =>
                {
                    fails.push((
                        Requirement::OwnerApproval,
                        name.clone(),
                        format!(
                            "the owner approval is by the author {:?} themself",
                            p.author
                        ),
                    ))
                }
                Some(o)
                    if !rules.owners.is_empty()
                        && !rules.owners.iter().any(|w| {
                            review::same_person_key(w) == review::same_person_key(&o.name)
                        }) =>
                {
                    fails.push((
                        Requirement::OwnerApproval,
                        name.clone(),
                        format!("{:?} is not an owner ({:?})", o.name, rules.owners),
                    ))
                }
                Some(_) => {}
            }
        }
        if rules.config_reviewed && !review.configs.contains(&ctx.job.config_digest) {
            fails.push((
                Requirement::ConfigReviewed,
                name.clone(),
                format!(
                    "the job's configuration {} is not among the reviewed files ({})",
                    ctx.job.config_digest,
                    if review.configs.is_empty() {
                        "none".to_owned()
                    } else {
                        review
                            .configs
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            ));
        }
        if fails.is_empty() {
            match ctx.check_time("review", &name, Some(review.merged_on)) {
                Ok(()) => return,
                Err(f) => fails.push(f),
            }
        }
        keep_best(&mut best, fails);
    }
    for (r, a, m) in best.unwrap_or_default() {
        ctx.add(r, Some(&a), m);
    }
}
