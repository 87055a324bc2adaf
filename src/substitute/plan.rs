//! Planning: which of the wanted paths each source holds, checked against the tool's path
//! infos, as plain data that `--dry-run --json` prints before anything is downloaded.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::SubstituteError;
use super::cache::{self, HttpCache, HttpOptions};
use super::config::{Settings, local_store_root};
use super::local::LocalStore;
use super::narinfo::{Compression, NarInfo};
use super::signature::TrustedKeys;
use crate::store::{PathInfo, StorePath};

/// narinfo requests in flight per cache: enough to hide the round trip on thousands of paths.
const NARINFO_CONCURRENCY: usize = 32;

/// Where substitutes come from.
pub(super) enum Source {
    Http(HttpCache),
    Local(LocalStore),
}

impl Source {
    pub(super) fn url(&self) -> String {
        match self {
            Self::Http(c) => c.url.clone(),
            Self::Local(l) => l.root().display().to_string(),
        }
    }

    pub(super) fn kind(&self) -> SourceKind {
        match self {
            Self::Http(_) => SourceKind::Cache,
            Self::Local(_) => SourceKind::Local,
        }
    }

    fn priority(&self) -> u64 {
        match self {
            Self::Http(c) => c.priority,
            // Nix's default priority for a store that names none; no network, so first.
            Self::Local(_) => 0,
        }
    }
}

/// The sources that could be opened, with the keys their signatures are checked against.
pub struct Substituter {
    pub(super) sources: Vec<Arc<Source>>,
    pub(super) keys: Arc<TrustedKeys>,
    pub(super) client: reqwest::Client,
    /// Why sources were skipped (unreachable, unsupported): to show the operator.
    pub warnings: Vec<String>,
}

/// One path to substitute.
#[derive(Debug, Clone, Serialize)]
pub struct Planned {
    pub path: StorePath,
    /// Index into [`SubstitutionPlan::sources`].
    pub source: usize,
    pub nar_size: u64,
    #[serde(flatten)]
    pub fetch: Fetch,
    #[serde(skip)]
    pub info: PathInfo,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Fetch {
    /// A NAR file from a binary cache.
    Nar {
        url: String,
        compression: Compression,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file_size: Option<u64>,
    },
    /// Dumped from a local store's directory.
    Local,
}

/// A wanted path no source will provide, and why (for each source that was asked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotSubstituted {
    pub path: StorePath,
    pub nar_size: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

/// What kind of source a summary's `url` names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// An http(s) binary cache; `url` is its URL.
    #[default]
    Cache,
    /// A local store read directly; `url` is its root (`/` for the running system's).
    Local,
}

impl SourceKind {
    /// How a person is shown the source `url` of this kind.
    pub fn name(self, url: &str) -> String {
        match self {
            Self::Cache => url.to_owned(),
            Self::Local => format!("local store {url}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceSummary {
    pub url: String,
    #[serde(default)]
    pub kind: SourceKind,
    pub priority: u64,
    pub paths: u64,
    pub nar_bytes: u64,
    /// Bytes to download (compressed), where the cache says.
    pub file_bytes: u64,
}

/// Which paths come from which source, in dependency order, and which the operator must stream.
#[derive(Debug, Clone, Serialize)]
pub struct SubstitutionPlan {
    pub sources: Vec<SourceSummary>,
    pub paths: Vec<Planned>,
    pub not_substituted: Vec<NotSubstituted>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl SubstitutionPlan {
    /// The paths that will be substituted.
    pub fn substituted(&self) -> BTreeSet<StorePath> {
        self.paths.iter().map(|p| p.path.clone()).collect()
    }

    pub fn nar_bytes(&self) -> u64 {
        self.paths.iter().map(|p| p.nar_size).sum()
    }

    /// The plan as the agent reports it to the tool: the same, without the path infos the
    /// tool has already.
    pub fn overview(&self) -> PlanOverview {
        PlanOverview {
            sources: self.sources.clone(),
            paths: self
                .paths
                .iter()
                .map(|p| PlannedPath {
                    path: p.path.clone(),
                    source: p.source,
                    nar_size: p.nar_size,
                    fetch: p.fetch.clone(),
                })
                .collect(),
            not_substituted: self.not_substituted.clone(),
            warnings: self.warnings.clone(),
        }
    }
}

/// A [`SubstitutionPlan`] as plain data, for the wire and `--dry-run --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanOverview {
    pub sources: Vec<SourceSummary>,
    pub paths: Vec<PlannedPath>,
    pub not_substituted: Vec<NotSubstituted>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedPath {
    pub path: StorePath,
    /// Index into [`PlanOverview::sources`].
    pub source: usize,
    pub nar_size: u64,
    #[serde(flatten)]
    pub fetch: Fetch,
}

impl PlanOverview {
    pub fn nar_bytes(&self) -> u64 {
        self.paths.iter().map(|p| p.nar_size).sum()
    }
}

impl Substituter {
    /// Opens every source of `settings` at once; one that cannot be reached within the
    /// deadline, or is of a kind not supported, is skipped with a warning. Only malformed
    /// keys or CA file are errors (bad input, before anything is asked).
    pub async fn open(settings: &Settings, opts: &HttpOptions) -> Result<Self, SubstituteError> {
        let keys = TrustedKeys::parse(settings.trusted_public_keys.iter().map(String::as_str))?;
        let client = cache::client(
            settings.ssl_cert_file.as_deref(),
            settings.ssl_certificates.as_ref(),
            opts,
        )?;
        let mut warnings = Vec::new();
        let mut opening = JoinSet::new();
        for (i, url) in settings.substituters.iter().enumerate() {
            if url.starts_with("http://") || url.starts_with("https://") {
                let (client, url, deadline) = (client.clone(), url.clone(), opts.open_deadline);
                opening.spawn(async move {
                    (
                        i,
                        HttpCache::open(&client, &url, deadline)
                            .await
                            .map(Source::Http),
                    )
                });
            } else if let Some(root) = local_store_root(url) {
                let opened = LocalStore::open(&root).map(Source::Local);
                opening.spawn(async move { (i, opened) });
            } else {
                warnings.push(SubstituteError::Unsupported(url.clone()).to_string());
            }
        }
        let mut opened = Vec::new();
        while let Some(done) = opening.join_next().await {
            match done.expect("opening a source does not panic") {
                (i, Ok(source)) => opened.push((i, source)),
                (_, Err(e)) => {
                    tracing::warn!("{e}");
                    warnings.push(e.to_string());
                }
            }
        }
        // By priority, then in the configured order, as Nix tries them.
        opened.sort_by_key(|(i, s)| (s.priority(), *i));
        Ok(Self {
            sources: opened.into_iter().map(|(_, s)| Arc::new(s)).collect(),
            keys: Arc::new(keys),
            client,
            warnings,
        })
    }

    /// Plans the substitution of `wanted` (the paths the target lacks, dependencies first; a
    /// reference outside `wanted` is taken to be valid on the target already).
    pub async fn plan(&self, wanted: &[PathInfo]) -> SubstitutionPlan {
        let mut found: BTreeMap<StorePath, (usize, Fetch)> = BTreeMap::new();
        let mut reasons: BTreeMap<StorePath, Vec<String>> = BTreeMap::new();
        let mut warnings = self.warnings.clone();
        for (index, source) in self.sources.iter().enumerate() {
            let left: Vec<PathInfo> = wanted
                .iter()
                .filter(|i| !found.contains_key(&i.path))
                .cloned()
                .collect();
            if left.is_empty() {
                break;
            }
            let answers = self.ask(source, left).await;
            let mut errors = 0usize;
            for (path, answer) in answers {
                match answer {
                    Answer::Use(fetch) => {
                        found.insert(path, (index, fetch));
                    }
                    Answer::Absent => {}
                    Answer::Reject(reason) => {
                        reasons
                            .entry(path)
                            .or_default()
                            .push(format!("{}: {reason}", source.kind().name(&source.url())));
                    }
                    Answer::Error(e) => {
                        errors += 1;
                        reasons.entry(path).or_default().push(e);
                    }
                }
            }
            if errors > 0 {
                warnings.push(format!(
                    "{}: {errors} queries failed; those paths are streamed",
                    source.kind().name(&source.url())
                ));
            }
        }

        let mut sources: Vec<SourceSummary> = self
            .sources
            .iter()
            .map(|s| SourceSummary {
                url: s.url(),
                kind: s.kind(),
                priority: s.priority(),
                paths: 0,
                nar_bytes: 0,
                file_bytes: 0,
            })
            .collect();
        let wanted_set: BTreeSet<&StorePath> = wanted.iter().map(|i| &i.path).collect();
        let mut planned_set: BTreeSet<StorePath> = BTreeSet::new();
        let mut paths = Vec::new();
        let mut not_substituted = Vec::new();
        for info in wanted {
            // A path is substituted only if every reference will be valid without the
            // operator's stream: so substitution never waits on it, and a cut leaves the
            // store consistent.
            let streamed_ref = info
                .references
                .iter()
                .find(|r| **r != info.path && wanted_set.contains(r) && !planned_set.contains(*r));
            match (found.remove(&info.path), streamed_ref) {
                (Some((source, fetch)), None) => {
                    let summary = &mut sources[source];
                    summary.paths += 1;
                    summary.nar_bytes += info.nar_size;
                    summary.file_bytes += match &fetch {
                        Fetch::Nar { file_size, .. } => file_size.unwrap_or(info.nar_size),
                        Fetch::Local => 0,
                    };
                    planned_set.insert(info.path.clone());
                    paths.push(Planned {
                        path: info.path.clone(),
                        source,
                        nar_size: info.nar_size,
                        fetch,
                        info: info.clone(),
                    });
                }
                (found_here, streamed_ref) => {
                    let mut why = reasons.remove(&info.path).unwrap_or_default();
                    if let (Some(_), Some(r)) = (found_here, streamed_ref) {
                        why.push(format!("references {r}, which no source provides"));
                    }
                    not_substituted.push(NotSubstituted {
                        path: info.path.clone(),
                        nar_size: info.nar_size,
                        reasons: why,
                    });
                }
            }
        }
        SubstitutionPlan {
            sources,
            paths,
            not_substituted,
            warnings,
        }
    }

    /// Asks one source about every path of `left`, many requests in flight.
    async fn ask(&self, source: &Arc<Source>, left: Vec<PathInfo>) -> Vec<(StorePath, Answer)> {
        if let Source::Local(store) = &**source {
            return left
                .into_iter()
                .map(|info| {
                    let answer = match store.matches(&info) {
                        Ok(None) => Answer::Absent,
                        Ok(Some(Ok(()))) => Answer::Use(Fetch::Local),
                        Ok(Some(Err(reason))) => Answer::Reject(reason),
                        Err(e) => Answer::Error(e.to_string()),
                    };
                    (info.path, answer)
                })
                .collect();
        }
        let limit = Arc::new(Semaphore::new(NARINFO_CONCURRENCY));
        let mut asking = JoinSet::new();
        for info in left {
            let (source, keys, client, limit) = (
                source.clone(),
                self.keys.clone(),
                self.client.clone(),
                limit.clone(),
            );
            asking.spawn(async move {
                let _permit = limit.acquire_owned().await.expect("never closed");
                let Source::Http(cache) = &*source else {
                    unreachable!("local sources are answered above")
                };
                let answer = match cache.narinfo(&client, &info.path).await {
                    Ok(None) => Answer::Absent,
                    Ok(Some(narinfo)) => check(cache, &keys, &info, narinfo),
                    Err(e) => Answer::Error(e.to_string()),
                };
                (info.path, answer)
            });
        }
        let mut answers = Vec::new();
        while let Some(done) = asking.join_next().await {
            answers.push(done.expect("a narinfo request does not panic"));
        }
        answers
    }
}

enum Answer {
    Use(Fetch),
    Absent,
    Reject(String),
    Error(String),
}

/// Whether a cache's narinfo may be used for `info`: signed by a trusted key, and describing
/// exactly the path the tool has.
fn check(cache: &HttpCache, keys: &TrustedKeys, info: &PathInfo, narinfo: NarInfo) -> Answer {
    if narinfo.path != info.path {
        return Answer::Reject(format!("the narinfo is for {}", narinfo.path));
    }
    if narinfo.nar_hash != info.nar_hash || narinfo.nar_size != info.nar_size {
        return Answer::Reject(format!(
            "the cache's NAR hash {} ({} bytes) differs from the tool's {} ({} bytes)",
            narinfo.nar_hash, narinfo.nar_size, info.nar_hash, info.nar_size
        ));
    }
    if narinfo.references != info.references {
        return Answer::Reject("the cache's references differ from the tool's".to_owned());
    }
    if !keys.verifies(&narinfo.fingerprint(), &narinfo.signatures) {
        return Answer::Reject(if narinfo.signatures.is_empty() {
            "the narinfo is not signed".to_owned()
        } else {
            "no signature by a trusted key".to_owned()
        });
    }
    Answer::Use(Fetch::Nar {
        url: cache.nar_url(&narinfo.url),
        compression: narinfo.compression,
        file_size: narinfo.file_size,
    })
}
