//! A real S3 server for the backup tests: s3s-fs (the s3s project's S3 over a directory), in
//! this process on a loopback port, with one access key. Objects are files under
//! `<root>/<bucket>/<key>`, read back here without S3.

use std::path::PathBuf;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;

pub const ACCESS_KEY: &str = "backup-writer";
pub const SECRET_KEY: &str = "backup-writer-secret";

pub struct S3Server {
    pub endpoint: String,
    root: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl S3Server {
    /// Serves `bucket` (created empty) on 127.0.0.1, on a port the system picks.
    pub async fn start(bucket: &str) -> S3Server {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(root.path().join(bucket)).expect("the bucket's directory");
        let fs = s3s_fs::FileSystem::new(root.path()).expect("s3s-fs");
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let service = service.clone();
                tokio::spawn(async move {
                    let _ = Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(socket), service).await;
                });
            }
        });
        S3Server { endpoint, root, task }
    }

    /// The objects under `bucket/prefix`, by name, with their bytes.
    pub fn objects(&self, bucket: &str, prefix: &str) -> Vec<(String, Vec<u8>)> {
        let dir: PathBuf = self.root.path().join(bucket).join(prefix);
        let mut found: Vec<(String, Vec<u8>)> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .flatten()
                .filter(|e| e.path().is_file())
                .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).expect("read")))
                .collect(),
            Err(_) => Vec::new(),
        };
        found.sort();
        found
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}
