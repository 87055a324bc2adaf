//! The HTTP(S) binary-cache client: `nix-cache-info`, `<hash>.narinfo`, and NAR downloads.
//!
//! One [`reqwest::Client`] is shared by every request, so connections are kept alive and many
//! requests are in flight at once. TLS is rustls on aws-lc-rs (which russh already links) with
//! the Mozilla roots compiled in: a target without CA files can still reach an https cache.
//! A private CA is added to those roots: the target's `ssl-cert-file`, or the operator's
//! `--ssl-cert-file`, read on the operator's machine and sent along as [`CaCertificates`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use super::SubstituteError;
use super::narinfo::{NarInfo, NarInfoError};
use crate::store::{STORE_DIR, StorePath};

/// Timeouts of the HTTP client.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Opening a cache (connect and `nix-cache-info`): past this it is skipped with a warning.
    pub open_deadline: Duration,
    /// A connection or request that sees no byte for this long fails (a server gone silent).
    pub idle_timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            open_deadline: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// CA certificates in PEM, read from a file on the operator's machine (`--ssl-cert-file`) and
/// sent to the agent whole: the target need not have the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaCertificates {
    /// Where they were read, on the operator's machine: what messages name.
    pub file: PathBuf,
    pub pem: String,
}

impl CaCertificates {
    /// Reads `file`, which must hold at least one PEM certificate that parses.
    pub fn read(file: &Path) -> Result<Self, SubstituteError> {
        let pem = std::fs::read_to_string(file).map_err(|e| SubstituteError::CertFile {
            path: file.to_owned(),
            reason: e.to_string(),
        })?;
        let ca = Self {
            file: file.to_owned(),
            pem,
        };
        ca.add_to(&mut rustls::RootCertStore::empty())?;
        Ok(ca)
    }

    fn add_to(&self, roots: &mut rustls::RootCertStore) -> Result<(), SubstituteError> {
        let certs = CertificateDer::pem_slice_iter(self.pem.as_bytes());
        add_certificates(roots, &self.file, certs)
    }
}

/// Adds every certificate of `certs` (read from `file`) to `roots`; at least one is needed.
fn add_certificates(
    roots: &mut rustls::RootCertStore,
    file: &Path,
    certs: impl Iterator<Item = Result<CertificateDer<'static>, rustls::pki_types::pem::Error>>,
) -> Result<(), SubstituteError> {
    let bad = |reason: String| SubstituteError::CertFile {
        path: file.to_owned(),
        reason,
    };
    let mut added = 0;
    for cert in certs {
        let cert = cert.map_err(|e| bad(e.to_string()))?;
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
        added += 1;
    }
    if added == 0 {
        return Err(bad("it holds no PEM certificate".to_owned()));
    }
    Ok(())
}

/// Builds the one client all caches share, trusting the bundled roots and the CA certificates
/// of `ssl_cert_file` (on this machine) and `certificates` (the operator's).
pub fn client(
    ssl_cert_file: Option<&Path>,
    certificates: Option<&CaCertificates>,
    opts: &HttpOptions,
) -> Result<reqwest::Client, SubstituteError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(file) = ssl_cert_file {
        let certs = CertificateDer::pem_file_iter(file).map_err(|e| SubstituteError::CertFile {
            path: file.to_owned(),
            reason: e.to_string(),
        })?;
        add_certificates(&mut roots, file, certs)?;
    }
    if let Some(certificates) = certificates {
        certificates.add_to(&mut roots)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SubstituteError::Client(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(opts.open_deadline)
        .read_timeout(opts.idle_timeout)
        .pool_max_idle_per_host(64)
        .user_agent(concat!("nixos-anywhere-rs/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| SubstituteError::Client(chain(&e)))
}

/// An http(s) binary cache that answered its `nix-cache-info`.
#[derive(Debug, Clone)]
pub struct HttpCache {
    /// The cache's URL without a trailing slash.
    pub url: String,
    pub priority: u64,
}

impl HttpCache {
    /// Reads `nix-cache-info` within `deadline`; its `StoreDir` must be `/nix/store`.
    pub async fn open(
        client: &reqwest::Client,
        url: &str,
        deadline: Duration,
    ) -> Result<Self, SubstituteError> {
        let url = url.trim_end_matches('/').to_owned();
        let info_url = format!("{url}/nix-cache-info");
        let body = tokio::time::timeout(deadline, get(client, &info_url))
            .await
            .map_err(|_| SubstituteError::Unreachable {
                url: url.clone(),
                seconds: deadline.as_secs_f64(),
            })??
            .ok_or_else(|| SubstituteError::Status {
                url: info_url.clone(),
                status: 404,
            })?;
        let text = String::from_utf8_lossy(&body);
        // Nix's default priority for a binary cache that names none.
        let mut priority = 50;
        for line in text.lines() {
            match line.split_once(':').map(|(k, v)| (k.trim(), v.trim())) {
                Some(("StoreDir", dir)) if dir != STORE_DIR => {
                    return Err(SubstituteError::StoreDir {
                        url,
                        found: dir.to_owned(),
                    });
                }
                Some(("Priority", p)) => {
                    priority = p.parse().map_err(|_| SubstituteError::CacheInfo {
                        url: info_url.clone(),
                        reason: format!("Priority {p:?} is not a number"),
                    })?;
                }
                _ => {}
            }
        }
        Ok(Self { url, priority })
    }

    /// The narinfo of `path`, or `None` if the cache does not have it.
    pub async fn narinfo(
        &self,
        client: &reqwest::Client,
        path: &StorePath,
    ) -> Result<Option<NarInfo>, SubstituteError> {
        let url = format!("{}/{}.narinfo", self.url, path.digest());
        let Some(body) = get(client, &url).await? else {
            return Ok(None);
        };
        NarInfo::parse(&body)
            .map(Some)
            .map_err(|reason: NarInfoError| SubstituteError::NarInfo { url, reason })
    }

    /// Where a narinfo's `URL` points.
    pub fn nar_url(&self, url: &str) -> String {
        if url.starts_with("http://") || url.starts_with("https://") {
            url.to_owned()
        } else {
            format!("{}/{url}", self.url)
        }
    }
}

/// Attempts at a small file whose connection failed (a busy server resets some), as Nix's
/// `download-attempts`.
const ATTEMPTS: u32 = 3;

/// GETs a small file whole; `None` on 404 (and 403, which S3-backed caches send for a missing
/// key). A failed connection is tried again, after a short pause; an HTTP error status is not.
async fn get(client: &reqwest::Client, url: &str) -> Result<Option<Vec<u8>>, SubstituteError> {
    let mut attempt = 1;
    loop {
        match get_once(client, url).await {
            Err(SubstituteError::Http { .. }) if attempt < ATTEMPTS => {
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

async fn get_once(client: &reqwest::Client, url: &str) -> Result<Option<Vec<u8>>, SubstituteError> {
    let http = |e: reqwest::Error| SubstituteError::Http {
        url: url.to_owned(),
        reason: chain(&e),
    };
    let resp = client.get(url).send().await.map_err(http)?;
    match resp.status() {
        StatusCode::NOT_FOUND | StatusCode::FORBIDDEN => return Ok(None),
        s if !s.is_success() => {
            return Err(SubstituteError::Status {
                url: url.to_owned(),
                status: s.as_u16(),
            });
        }
        _ => {}
    }
    let mut resp = resp;
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(http)? {
        if body.len() + chunk.len() > super::narinfo::MAX_NARINFO_LEN {
            return Err(SubstituteError::NarInfo {
                url: url.to_owned(),
                reason: NarInfoError::TooLong,
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// An error with its causes, `a: b: c`, since reqwest's own text leaves out the cause.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}
