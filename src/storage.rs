//! Locations on object stores: parsing user paths and URLs, building stores from the
//! standard environment (as datafusion-cli does), listing files under a glob.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ClientConfigKey, ObjectMeta, ObjectStore, ObjectStoreExt, RetryConfig};
use url::Url;

use crate::config::StorageSpec;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{location}: not a valid location: {reason}")]
    BadLocation { location: String, reason: String },
    #[error("{location}: cannot configure the {scheme} store: {source}")]
    Configure { location: String, scheme: String, source: object_store::Error },
    #[error("{location}: {source}")]
    Io { location: String, source: object_store::Error },
    #[error("{file}: a symbolic link to nothing, matched by {location}; remove it or restore its target")]
    DanglingLink { location: String, file: String },
}

impl StorageError {
    /// What the user has to do about this error (the exit code).
    pub fn exit_class(&self) -> crate::ExitClass {
        match self {
            StorageError::BadLocation { .. } => crate::ExitClass::Config,
            _ => crate::ExitClass::Other,
        }
    }
}

/// Kind of object store a location lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Local,
    S3,
    Gcs,
    Azure,
}

/// A place on an object store, optionally with a glob over the files under it.
#[derive(Debug, Clone, PartialEq)]
pub struct Location {
    pub kind: StoreKind,
    /// `scheme://bucket/` (or `file:///`), the key DataFusion registers stores under.
    pub store_url: ObjectStoreUrl,
    /// The fixed part of the path inside the store.
    pub prefix: ObjectPath,
    /// The part after the first segment with a wildcard, relative to `prefix`.
    pub glob: Option<String>,
}

fn has_wildcard(segment: &str) -> bool {
    segment.contains(['*', '?', '[', '{'])
}

impl Location {
    /// Parses a path or URL. Plain paths and `file://` URLs are local; a relative one
    /// resolves against `base_dir` (the pipeline file's folder).
    pub fn parse(raw: &str, base_dir: &Path) -> Result<Location, StorageError> {
        let bad = |reason: &str| StorageError::BadLocation { location: redact(raw), reason: reason.into() };
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(bad("empty"));
        }
        let (kind, bucket, path) = match raw.split_once("://") {
            // A secret in a URL would be printed in errors and sent in request paths.
            Some((_, rest)) if has_userinfo(rest) => {
                return Err(bad(
                    "credentials in a location are not read: remove `user:password@` and set them in the \
                     environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, GOOGLE_SERVICE_ACCOUNT, \
                     AZURE_STORAGE_ACCOUNT_KEY; AWS_ENDPOINT_URL for a server's address)",
                ));
            }
            Some((scheme, rest)) => {
                let kind = match scheme.to_ascii_lowercase().as_str() {
                    "file" => StoreKind::Local,
                    "s3" | "s3a" => StoreKind::S3,
                    "gs" | "gcs" => StoreKind::Gcs,
                    "az" | "azure" | "abfs" | "abfss" => StoreKind::Azure,
                    other => return Err(bad(&format!("unsupported scheme `{other}` (file, s3, gs, az)"))),
                };
                if kind == StoreKind::Local {
                    (kind, String::new(), rest.to_string())
                } else {
                    let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
                    if bucket.is_empty() {
                        return Err(bad("no bucket"));
                    }
                    (kind, bucket.to_string(), path.to_string())
                }
            }
            None => (StoreKind::Local, String::new(), raw.to_string()),
        };
        let (store_url, full_path) = if kind == StoreKind::Local {
            let p = PathBuf::from(&path);
            let abs = if p.is_absolute() { p } else { absolute(&base_dir.join(p)) };
            let text = abs.to_string_lossy().replace('\\', "/");
            (ObjectStoreUrl::local_filesystem(), text.trim_start_matches('/').to_string())
        } else {
            let scheme = match kind {
                StoreKind::S3 => "s3",
                StoreKind::Gcs => "gs",
                _ => "az",
            };
            let url = ObjectStoreUrl::parse(format!("{scheme}://{bucket}")).map_err(|e| bad(&e.to_string()))?;
            (url, path)
        };
        let segments: Vec<&str> = full_path.split('/').filter(|s| !s.is_empty() && *s != ".").collect();
        let wildcard_at = segments.iter().position(|s| has_wildcard(s));
        let (fixed, glob) = match wildcard_at {
            Some(i) => (&segments[..i], Some(segments[i..].join("/"))),
            None => (&segments[..], None),
        };
        let prefix = ObjectPath::parse(fixed.join("/")).map_err(|e| bad(&e.to_string()))?;
        if let Some(g) = &glob {
            glob::Pattern::new(g).map_err(|e| bad(&format!("bad glob `{g}`: {e}")))?;
        }
        Ok(Location { kind, store_url, prefix, glob })
    }

    /// A location under this one (`output` -> `output/customers`).
    pub fn child(&self, name: &str) -> Location {
        let mut prefix = self.prefix.clone();
        for part in name.split('/').filter(|p| !p.is_empty()) {
            prefix = prefix.clone().join(part);
        }
        Location { prefix, glob: None, ..self.clone() }
    }

    /// The local folder or file of a `file://` location.
    pub fn local_path(&self) -> Option<PathBuf> {
        (self.kind == StoreKind::Local).then(|| PathBuf::from(format!("/{}", self.prefix)))
    }

    /// Full URL of the fixed part, as DataFusion takes it (`s3://bucket/a/b/`).
    pub fn url(&self) -> String {
        format!("{}{}", self.store_url.as_str(), self.prefix)
    }

    /// The URL of one object on this location's store.
    pub fn object_url(&self, path: &ObjectPath) -> String {
        format!("{}{}", self.store_url.as_str(), path)
    }

    /// Human form: URL with the glob.
    pub fn display(&self) -> String {
        match &self.glob {
            Some(g) => format!("{}/{}", self.url().trim_end_matches('/'), g),
            None => self.url(),
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display())
    }
}

/// Whether the part of a URL after `scheme://` starts with a user, password or port (a
/// bucket name never holds `:` or `@`).
fn has_userinfo(rest: &str) -> bool {
    let authority = rest.split('/').next().unwrap_or_default();
    authority.contains(':') || authority.contains('@')
}

/// Lexical absolute path (no symlink resolution, the target may not exist yet).
fn absolute(p: &Path) -> PathBuf {
    let joined = if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir().unwrap_or_default().join(p) };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Hides the user and password of `scheme://user:password@host` and query-string
/// secrets, for errors, logs and the manifest.
pub fn redact(raw: &str) -> String {
    // The last `@` after a `user:password` ends the secret, even one holding a `/`.
    let raw = match raw.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((secret, host)) if secret.contains(':') || !secret.contains('/') => format!("{scheme}://***@{host}"),
            _ => raw.to_string(),
        },
        None => raw.to_string(),
    };
    let Ok(mut url) = Url::parse(&raw) else { return raw };
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let secret = ["sig", "token", "key", "secret", "password", "credential"]
                    .iter()
                    .any(|s| k.to_ascii_lowercase().contains(s));
                (k.into_owned(), if secret { "***".into() } else { v.into_owned() })
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

/// Retry policy for remote stores from the YAML's `storage` section.
fn retry_config(spec: &StorageSpec) -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(spec.initial_backoff_ms),
            max_backoff: Duration::from_millis(spec.max_backoff_ms),
            base: 2.0,
        },
        max_retries: spec.max_retries,
        retry_timeout: Duration::from_secs(spec.retry_timeout_s),
    }
}

/// Builds the store for a remote location from the standard environment variables
/// (`AWS_*`, `GOOGLE_*`, `AZURE_*`), with the pipeline's retry settings.
pub fn build_store(loc: &Location, spec: &StorageSpec) -> Result<Arc<dyn ObjectStore>, StorageError> {
    let bucket = loc.store_url.as_str().split("://").nth(1).unwrap_or("").trim_end_matches('/').to_string();
    let timeout = format!("{}s", spec.request_timeout_s);
    let wrap =
        |scheme: &str, source| StorageError::Configure { location: loc.display(), scheme: scheme.into(), source };
    Ok(match loc.kind {
        StoreKind::Local => Arc::new(object_store::local::LocalFileSystem::new()),
        StoreKind::S3 => {
            let mut b = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry_config(spec))
                .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), timeout);
            // Path-style requests work with every S3-compatible server; virtual-hosted
            // style needs DNS per bucket, which local servers do not have.
            if std::env::var("AWS_ENDPOINT_URL").is_ok() || std::env::var("AWS_ENDPOINT").is_ok() {
                b = b.with_virtual_hosted_style_request(false);
            }
            Arc::new(b.build().map_err(|e| wrap("s3", e))?)
        }
        StoreKind::Gcs => Arc::new(
            GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry_config(spec))
                .with_config(GoogleConfigKey::Client(ClientConfigKey::Timeout), timeout)
                .build()
                .map_err(|e| wrap("gcs", e))?,
        ),
        StoreKind::Azure => Arc::new(
            MicrosoftAzureBuilder::from_env()
                .with_container_name(bucket)
                .with_retry(retry_config(spec))
                .with_config(AzureConfigKey::Client(ClientConfigKey::Timeout), timeout)
                .build()
                .map_err(|e| wrap("azure", e))?,
        ),
    })
}

/// The store of a location, registered on the session's runtime so that DataFusion's
/// readers and writers use the same client.
pub fn store_for(
    ctx: &SessionContext,
    loc: &Location,
    spec: &StorageSpec,
) -> Result<Arc<dyn ObjectStore>, StorageError> {
    let url = loc.store_url.as_ref();
    if let Ok(store) = ctx.runtime_env().object_store(&loc.store_url) {
        return Ok(store);
    }
    let store = build_store(loc, spec)?;
    ctx.register_object_store(url, store.clone());
    Ok(store)
}

/// Every object under `prefix`. A listing reads its pages' bodies after the store's retry
/// policy has done its part: object_store retries a request that fails, not a response
/// body cut off mid-way (a dropped connection), so such a listing is started again.
pub async fn list_all(store: &dyn ObjectStore, prefix: &ObjectPath) -> object_store::Result<Vec<ObjectMeta>> {
    const ATTEMPTS: u32 = 4;
    let mut attempt = 1;
    loop {
        match store.list(Some(prefix)).try_collect().await {
            Err(e @ object_store::Error::Generic { .. }) if attempt < ATTEMPTS && e.to_string().contains("body") => {
                tracing::warn!(error = %e, attempt, "listing cut off; listing again");
                tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
                attempt += 1;
            }
            done => return done,
        }
    }
}

/// Files at a location: the objects under the prefix matching the glob, or the single
/// object the location names, sorted by path. Empty when nothing matches.
pub async fn list_files(store: &dyn ObjectStore, loc: &Location) -> Result<Vec<ObjectMeta>, StorageError> {
    let io = |source| StorageError::Io { location: loc.display(), source };
    if loc.glob.is_none() {
        match store.head(&loc.prefix).await {
            Ok(meta) => return Ok(vec![meta]),
            Err(object_store::Error::NotFound { .. }) => {}
            // A local folder answers `head` with an error of its own: list it instead.
            Err(_) if loc.kind == StoreKind::Local => {}
            Err(e) => return Err(io(e)),
        }
    }
    let pattern = loc.glob.as_deref().map(glob::Pattern::new).transpose().ok().flatten();
    let prefix_len = loc.prefix.as_ref().len();
    let mut files: Vec<ObjectMeta> = match list_all(store, &loc.prefix).await {
        Ok(files) => files,
        Err(object_store::Error::NotFound { .. }) => Vec::new(),
        Err(e) => return Err(io(e)),
    };
    files.retain(|meta| {
        let rel = meta.location.as_ref()[prefix_len..].trim_start_matches('/');
        let hidden = rel.split('/').any(|s| s.starts_with('.') || s.starts_with('_'));
        !hidden && pattern.as_ref().is_none_or(|p| p.matches(rel))
    });
    files.sort_by(|a, b| a.location.cmp(&b.location));
    if let Some(dir) = loc.local_path() {
        let matches = |rel: &str| {
            let hidden = rel.split('/').any(|s| s.starts_with('.') || s.starts_with('_'));
            !hidden && pattern.as_ref().is_none_or(|p| p.matches(rel))
        };
        if let Some(link) = dangling_link(&dir, &dir, &matches) {
            return Err(StorageError::DanglingLink { location: loc.display(), file: link.display().to_string() });
        }
    }
    Ok(files)
}

/// A symbolic link under `dir` that points nowhere and names an input: the store's
/// listing skips it, and with it a file the user meant to load.
fn dangling_link(root: &Path, dir: &Path, matches: &dyn Fn(&str) -> bool) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let rel = path.strip_prefix(root).ok()?.to_string_lossy().replace('\\', "/");
        let Ok(kind) = entry.file_type() else { continue };
        match std::fs::metadata(&path) {
            Err(_) if kind.is_symlink() && matches(&rel) => return Some(path),
            Ok(m) if m.is_dir() && !kind.is_symlink() => {
                if let Some(found) = dangling_link(root, &path, matches) {
                    return Some(found);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_resolve_against_base() {
        let loc = Location::parse("../data/crm/contacts*.csv", Path::new("/repo/pipelines")).unwrap();
        assert_eq!(loc.kind, StoreKind::Local);
        assert_eq!(loc.prefix.as_ref(), "repo/data/crm");
        assert_eq!(loc.glob.as_deref(), Some("contacts*.csv"));
        let dotted = Location::parse("file://./out/retail", Path::new("/repo/pipelines")).unwrap();
        assert_eq!(dotted.local_path().unwrap(), PathBuf::from("/repo/pipelines/out/retail"));
        let abs = Location::parse("file:///tmp/x", Path::new("/repo")).unwrap();
        assert_eq!(abs.url(), "file:///tmp/x");
    }

    #[test]
    fn remote_locations_split_bucket_prefix_and_glob() {
        let loc = Location::parse("s3://dumps/day1/crm/contacts*.csv", Path::new("/")).unwrap();
        assert_eq!(loc.kind, StoreKind::S3);
        assert_eq!(loc.store_url.as_str(), "s3://dumps/");
        assert_eq!(loc.prefix.as_ref(), "day1/crm");
        assert_eq!(loc.display(), "s3://dumps/day1/crm/contacts*.csv");
        let gs = Location::parse("gs://b/out", Path::new("/")).unwrap();
        assert_eq!(gs.kind, StoreKind::Gcs);
        assert_eq!(gs.child("customers").url(), "gs://b/out/customers");
        assert_eq!(Location::parse("az://c/x", Path::new("/")).unwrap().kind, StoreKind::Azure);
    }

    #[test]
    fn bad_locations() {
        assert!(Location::parse("ftp://x/y", Path::new("/")).is_err());
        assert!(Location::parse("s3:///y", Path::new("/")).is_err());
        assert!(Location::parse("", Path::new("/")).is_err());
    }

    #[test]
    fn secrets_are_redacted() {
        assert_eq!(redact("s3://key:geheim@bucket/x"), "s3://***@bucket/x");
        assert_eq!(redact("s3://AKID:se/cr@et@bucket/x"), "s3://***@bucket/x");
        assert_eq!(redact("s3://AKID@bucket/x"), "s3://***@bucket/x");
        assert_eq!(redact("s3://bucket/data@2026/x"), "s3://bucket/data@2026/x");
        for raw in ["s3://AKIDX:geheim@bucket/x", "s3://AKIDX:ge/he@im@bucket/x", "gs://piet@b/x"] {
            let err = Location::parse(raw, Path::new("/")).unwrap_err().to_string();
            assert!(!err.contains("geheim") && !err.contains("AKIDX") && !err.contains("piet"), "{err}");
            assert!(err.contains("***@"), "{err}");
            assert!(err.contains("AWS_ACCESS_KEY_ID"), "{err}");
        }
        assert!(!redact("https://acc.blob.core.windows.net/c?sig=abc&sv=1").contains("abc"));
        assert_eq!(redact("/plain/path"), "/plain/path");
    }

    #[tokio::test]
    async fn listing_with_glob_skips_hidden_files() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["contacts_1.csv", "contacts_2.csv", "other.csv", ".contacts_tmp.csv"] {
            std::fs::write(dir.path().join(name), "a\n1\n").unwrap();
        }
        let loc = Location::parse(&format!("{}/contacts*.csv", dir.path().display()), Path::new("/")).unwrap();
        let store = build_store(&loc, &StorageSpec::default()).unwrap();
        let files = list_files(store.as_ref(), &loc).await.unwrap();
        let names: Vec<_> = files.iter().map(|f| f.location.filename().unwrap().to_string()).collect();
        assert_eq!(names, ["contacts_1.csv", "contacts_2.csv"]);
        let single = Location::parse(&format!("{}/other.csv", dir.path().display()), Path::new("/")).unwrap();
        assert_eq!(list_files(store.as_ref(), &single).await.unwrap().len(), 1);
    }

    /// Environment variables are process-wide: this one test owns the GCS and Azure ones.
    #[test]
    fn gcs_and_azure_stores_come_from_their_standard_environment() {
        let spec = StorageSpec::default();
        let az = Location::parse("az://container/golden", Path::new("/")).unwrap();
        let gs = Location::parse("gs://bucket/golden", Path::new("/")).unwrap();
        // SAFETY: no other test reads or writes these variables.
        unsafe {
            std::env::remove_var("AZURE_STORAGE_ACCOUNT_NAME");
            std::env::remove_var("AZURE_STORAGE_ACCOUNT_KEY");
        }
        let err = build_store(&az, &spec).expect_err("azure needs an account").to_string();
        assert!(err.starts_with("az://container/golden: cannot configure the azure store"), "{err}");
        unsafe {
            std::env::set_var("AZURE_STORAGE_ACCOUNT_NAME", "klantbeeldacct");
            std::env::set_var("AZURE_STORAGE_ACCOUNT_KEY", "a2xhbnRiZWVsZA==");
        }
        assert!(build_store(&az, &spec).is_ok());
        unsafe {
            std::env::set_var("GOOGLE_SERVICE_ACCOUNT_KEY", "{not json");
        }
        let err = build_store(&gs, &spec).expect_err("a broken key is refused").to_string();
        assert!(err.starts_with("gs://bucket/golden: cannot configure the gcs store"), "{err}");
        unsafe {
            std::env::remove_var("GOOGLE_SERVICE_ACCOUNT_KEY");
            std::env::remove_var("AZURE_STORAGE_ACCOUNT_NAME");
            std::env::remove_var("AZURE_STORAGE_ACCOUNT_KEY");
        }
        // Without explicit credentials GCS falls back to the metadata server, lazily.
        assert!(build_store(&gs, &spec).is_ok());
    }

    #[test]
    fn s3_store_reads_standard_environment() {
        // Building must not need network or credentials up front.
        let loc = Location::parse("s3://bucket/x", Path::new("/")).unwrap();
        assert!(build_store(&loc, &StorageSpec::default()).is_ok());
    }
}
