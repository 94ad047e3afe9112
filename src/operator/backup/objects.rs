//! Where backups are kept: S3-compatible object storage through `object_store` (one interface
//! for S3, GCS, Azure and files, so other clouds come at small cost). Snapshots stream from a
//! member into a multipart upload (`buffered::BufWriter`: one PUT below `PART_BYTES`, parts
//! above, at most `PARTS_IN_FLIGHT` at a time), so memory stays bounded whatever their size.
//!
//! A failure is classified for the status and the events ([`Failure`]): credentials the store
//! refuses, an endpoint that does not answer, a bucket that does not exist, or anything else.

use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::client::{HttpError, HttpErrorKind};
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};

/// Bytes per part of a multipart upload (S3's least is 5 MiB; at most 10,000 parts: 80 GiB).
const PART_BYTES: usize = 8 << 20;
/// Parts uploaded at once.
const PARTS_IN_FLIGHT: usize = 2;
/// Each request's connection attempt, and the whole of one request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Retries of a request that failed in a way worth retrying, and how long they may take.
const RETRIES: usize = 2;
const RETRY_TIMEOUT: Duration = Duration::from_secs(20);

/// An S3-compatible bucket, as `spec.backup.destination.s3` and its Secret give it.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Target {
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    /// Keys are `<prefix>/<name>`; no slash at either end.
    pub prefix: String,
    pub path_style: bool,
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Target")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("prefix", &self.prefix)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Why a store call failed, as the status and the events say it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The store refused the credentials or their permissions.
    CredentialsRejected(String),
    /// Nothing answered at the endpoint (refused, unresolved, timed out).
    EndpointUnreachable(String),
    /// The bucket does not exist.
    BucketNotFound(String),
    /// The credentials Secret is missing, or lacks a key.
    NoCredentials(String),
    /// No member to take a backup from (no leader with quorum).
    NoMember(String),
    /// Anything else: the member's stream, a local file, the store's other answers.
    Failed(String),
}

impl Failure {
    /// The condition's and the event's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::CredentialsRejected(_) => "CredentialsRejected",
            Failure::EndpointUnreachable(_) => "EndpointUnreachable",
            Failure::BucketNotFound(_) => "BucketNotFound",
            Failure::NoCredentials(_) => "CredentialsMissing",
            Failure::NoMember(_) => "NoMember",
            Failure::Failed(_) => "BackupFailed",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Failure::CredentialsRejected(m)
            | Failure::EndpointUnreachable(m)
            | Failure::BucketNotFound(m)
            | Failure::NoCredentials(m)
            | Failure::NoMember(m)
            | Failure::Failed(m) => m,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason(), self.message())
    }
}

/// Sorts an `object_store` error into a [`Failure`]. Credentials show as 401 or 403 on single
/// objects; a list keeps them only in its text, as S3's error codes; an unreachable endpoint
/// is an HTTP error of kind connect or timeout somewhere in the error's sources.
pub fn classify(error: &object_store::Error) -> Failure {
    let text = error.to_string();
    if matches!(error, object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }) {
        return Failure::CredentialsRejected(text);
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(http) = current.downcast_ref::<HttpError>() {
            if matches!(http.kind(), HttpErrorKind::Connect | HttpErrorKind::Timeout) {
                return Failure::EndpointUnreachable(text);
            }
        }
        source = current.source();
    }
    const CREDENTIALS: [&str; 6] =
        ["InvalidAccessKeyId", "SignatureDoesNotMatch", "NotSignedUp", "AccessDenied", "ExpiredToken", "403 Forbidden"];
    if CREDENTIALS.iter().any(|code| text.contains(code)) {
        return Failure::CredentialsRejected(text);
    }
    if text.contains("NoSuchBucket") {
        return Failure::BucketNotFound(text);
    }
    Failure::Failed(text)
}

/// The same for the I/O error a writer's `shutdown` returns (an `object_store` error inside).
pub fn classify_io(error: &std::io::Error) -> Failure {
    match error.get_ref().and_then(|inner| inner.downcast_ref::<object_store::Error>()) {
        Some(inner) => classify(inner),
        None => Failure::Failed(error.to_string()),
    }
}

/// One object of the bucket under the prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The name under the prefix.
    pub name: String,
    pub size: u64,
    /// Unix seconds.
    pub modified: i64,
}

/// A bucket and prefix, open.
#[derive(Clone, Debug)]
pub struct Objects {
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

impl Objects {
    /// Opens the bucket (no call is made yet). The rustls provider must be installed first
    /// (`base::tls::install_default_provider`): the store's HTTP client is built here.
    pub fn s3(target: &S3Target) -> Result<Objects, Failure> {
        crate::base::tls::install_default_provider();
        let options = ClientOptions::new()
            .with_allow_http(target.endpoint.starts_with("http://"))
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT);
        let retry =
            RetryConfig { backoff: BackoffConfig::default(), max_retries: RETRIES, retry_timeout: RETRY_TIMEOUT };
        // Virtual-hosted style: object_store wants the bucket's own host as the endpoint.
        let endpoint = match (target.path_style, target.endpoint.split_once("://")) {
            (false, Some((scheme, host))) => format!("{scheme}://{}.{host}", target.bucket),
            _ => target.endpoint.clone(),
        };
        let store = AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_bucket_name(&target.bucket)
            .with_region(&target.region)
            .with_access_key_id(&target.access_key_id)
            .with_secret_access_key(&target.secret_access_key)
            .with_virtual_hosted_style_request(!target.path_style)
            .with_client_options(options)
            .with_retry(retry)
            .build()
            .map_err(|e| Failure::Failed(format!("cannot use the bucket {}: {e}", target.bucket)))?;
        Ok(Objects { store: Arc::new(store), prefix: target.prefix.trim_matches('/').to_string() })
    }

    /// The files under the directory `dir`, which must exist (`kuberaft backup`, in the Job of a
    /// PersistentVolumeClaim destination): the same calls as a bucket's.
    pub fn local(dir: &std::path::Path) -> Result<Objects, Failure> {
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| Failure::Failed(format!("cannot use the directory {}: {e}", dir.display())))?;
        Ok(Objects { store: Arc::new(store), prefix: String::new() })
    }

    fn path(&self, name: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(name)
        } else {
            ObjectPath::from(format!("{}/{name}", self.prefix))
        }
    }

    /// Where `name` is kept, for the status: `s3://<bucket>/<key>` is the caller's to build.
    pub fn key(&self, name: &str) -> String {
        self.path(name).to_string()
    }

    /// A writer for the object `name` (an `AsyncWrite`): `shutdown` completes the upload,
    /// `abort` (see [`Objects::abort`]) leaves nothing behind.
    pub fn writer(&self, name: &str) -> BufWriter {
        BufWriter::with_capacity(self.store.clone(), self.path(name), PART_BYTES).with_max_concurrency(PARTS_IN_FLIGHT)
    }

    /// Ends an upload that failed, so that no part is left on the store.
    pub async fn abort(writer: &mut BufWriter) {
        if let Err(e) = writer.abort().await {
            tracing::warn!("cannot abort an upload that failed: {e}");
        }
    }

    /// The objects under the prefix, oldest first (by modification time, then name).
    pub async fn list(&self) -> Result<Vec<Stored>, Failure> {
        let prefix = (!self.prefix.is_empty()).then(|| ObjectPath::from(self.prefix.as_str()));
        let found: Vec<object_store::ObjectMeta> =
            self.store.list(prefix.as_ref()).try_collect().await.map_err(|e| classify(&e))?;
        let cut = if self.prefix.is_empty() { 0 } else { self.prefix.len() + 1 };
        let mut stored: Vec<Stored> = found
            .into_iter()
            .map(|meta| Stored {
                name: meta.location.as_ref().get(cut..).unwrap_or_default().to_string(),
                size: meta.size,
                modified: meta.last_modified.timestamp(),
            })
            .collect();
        stored.sort_by(|a, b| (a.modified, &a.name).cmp(&(b.modified, &b.name)));
        Ok(stored)
    }

    /// The object `name`'s size, or `None` when there is none.
    pub async fn size(&self, name: &str) -> Result<Option<u64>, Failure> {
        match self.store.head(&self.path(name)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(classify(&e)),
        }
    }

    /// Deletes the object `name` (one that is not there is no error).
    pub async fn delete(&self, name: &str) -> Result<(), Failure> {
        match self.store.delete(&self.path(name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(classify(&e)),
        }
    }

    /// The object `name`'s bytes as a stream (a restore reads them).
    pub async fn read(
        &self,
        name: &str,
    ) -> Result<futures::stream::BoxStream<'static, object_store::Result<bytes::Bytes>>, Failure> {
        let got = self.store.get(&self.path(name)).await.map_err(|e| classify(&e))?;
        Ok(got.into_stream())
    }
}
