//! SLSA Provenance v1 (`https://slsa.dev/provenance/v1`): who built an artifact, how, and
//! from which source.
//!
//! The source (repository, ref, commit) is not fixed by the SLSA schema — each build type puts
//! it in its external parameters. Two layouts are read: Ringfence's own build type
//! (`externalParameters.source = {repository, ref, commit}`) and the common workflow form
//! (`externalParameters.workflow = {repository, ref}` with the commit in a resolved
//! dependency's `gitCommit` digest). A provenance whose source cannot be found has
//! `source = None`, and a policy that asks for a source refuses it.

use ringfence_core::UnixTime;
use serde::Deserialize;
use serde_json::Value;

use crate::statement::{Statement, StatementError, parse_commit};

/// The SLSA Provenance v1 predicate type.
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
/// Ringfence's build type (the builder arrives in a later release; the demo builder uses it).
pub const RINGFENCE_BUILD_TYPE: &str = "https://ringfence.dev/build/v1";

/// Where a build's source came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The repository URI.
    pub repository: String,
    /// The ref built (`refs/heads/main`, a tag).
    pub git_ref: String,
    /// The commit built.
    pub commit: String,
}

/// The fields of a provenance the policies look at.
#[derive(Debug, Clone, PartialEq)]
pub struct Provenance {
    /// `runDetails.builder.id`.
    pub builder_id: String,
    /// `buildDefinition.buildType`.
    pub build_type: String,
    /// The source, when the build type says where it is.
    pub source: Option<Source>,
    /// `runDetails.metadata.finishedOn` (or `startedOn`), if given.
    pub finished_on: Option<UnixTime>,
    /// `buildDefinition.externalParameters`, as given.
    pub external_parameters: Value,
    /// The number of resolved dependencies.
    pub resolved_dependencies: usize,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPredicate {
    build_definition: RawBuildDefinition,
    run_details: RawRunDetails,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBuildDefinition {
    build_type: String,
    external_parameters: Value,
    #[serde(default)]
    resolved_dependencies: Vec<RawResource>,
}

#[derive(Deserialize)]
struct RawResource {
    #[serde(default)]
    uri: String,
    #[serde(default)]
    digest: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRunDetails {
    builder: RawBuilder,
    #[serde(default)]
    metadata: Option<RawMetadata>,
}

#[derive(Deserialize)]
struct RawBuilder {
    id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMetadata {
    #[serde(default)]
    started_on: Option<String>,
    #[serde(default)]
    finished_on: Option<String>,
}

/// Parses an RFC 3339 UTC timestamp (`2026-11-25T10:00:00Z`, fractions allowed).
pub fn parse_time(s: &str) -> Result<UnixTime, StatementError> {
    let t = humantime::parse_rfc3339(s)
        .map_err(|e| StatementError::Malformed(format!("timestamp {s:?}: {e}")))?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| StatementError::Malformed(format!("timestamp {s:?} is before 1970")))?
        .as_millis();
    Ok(UnixTime::from_millis(u64::try_from(ms).unwrap_or(u64::MAX)))
}

/// Formats a time as RFC 3339 UTC with seconds.
pub fn format_time(t: UnixTime) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.as_secs()),
    )
    .to_string()
}

impl Provenance {
    /// Reads the SLSA Provenance v1 predicate of a statement.
    pub fn from_statement(statement: &Statement) -> Result<Self, StatementError> {
        if statement.predicate_type() != PREDICATE_TYPE {
            return Err(StatementError::Malformed(format!(
                "predicate type {:?} is not {PREDICATE_TYPE}",
                statement.predicate_type()
            )));
        }
        let raw = RawPredicate::deserialize(statement.predicate())
            .map_err(|e| StatementError::Malformed(format!("SLSA provenance: {e}")))?;
        if raw.run_details.builder.id.is_empty() {
            return Err(StatementError::Malformed(
                "SLSA provenance: builder id is empty".into(),
            ));
        }
        let finished_on = match raw.run_details.metadata {
            Some(m) => match m.finished_on.or(m.started_on) {
                Some(t) => Some(parse_time(&t)?),
                None => None,
            },
            None => None,
        };
        let source = find_source(
            &raw.build_definition.external_parameters,
            &raw.build_definition.resolved_dependencies,
        )?;
        Ok(Self {
            builder_id: raw.run_details.builder.id,
            build_type: raw.build_definition.build_type,
            source,
            finished_on,
            external_parameters: raw.build_definition.external_parameters,
            resolved_dependencies: raw.build_definition.resolved_dependencies.len(),
        })
    }
}

/// True when a resolved dependency's URI (`git+<repo>[@<ref>]`) names exactly `repository`
/// (an optional `.git` suffix aside) — not a repository whose name merely starts the same.
fn same_repository(uri: &str, repository: &str) -> bool {
    if repository.is_empty() {
        return false;
    }
    let uri = uri.strip_prefix("git+").unwrap_or(uri);
    // The ref follows the last '@' after the host (userinfo is not expected in these URIs).
    let base = match uri.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((path, _ref)) => format!("{scheme}://{path}"),
            None => uri.to_owned(),
        },
        None => uri.to_owned(),
    };
    let norm = |s: &str| s.trim_end_matches('/').trim_end_matches(".git").to_owned();
    norm(&base) == norm(repository)
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn find_source(params: &Value, deps: &[RawResource]) -> Result<Option<Source>, StatementError> {
    if let Some(src) = params.get("source") {
        let (Some(repository), Some(git_ref), Some(commit)) = (
            str_at(src, "repository"),
            str_at(src, "ref"),
            str_at(src, "commit"),
        ) else {
            return Err(StatementError::Malformed(
                "SLSA provenance: externalParameters.source needs repository, ref and commit"
                    .into(),
            ));
        };
        return Ok(Some(Source {
            repository: repository.to_owned(),
            git_ref: git_ref.to_owned(),
            commit: parse_commit(commit)?,
        }));
    }
    if let Some(wf) = params.get("workflow")
        && let (Some(repository), Some(git_ref)) = (str_at(wf, "repository"), str_at(wf, "ref"))
    {
        let commit = deps
            .iter()
            .find(|d| same_repository(&d.uri, repository))
            .and_then(|d| d.digest.get("gitCommit"));
        if let Some(commit) = commit {
            return Ok(Some(Source {
                repository: repository.to_owned(),
                git_ref: git_ref.to_owned(),
                commit: parse_commit(commit)?,
            }));
        }
    }
    Ok(None)
}
