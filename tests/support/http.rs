//! The tests' own HTTP clients. reqwest is built with rustls and no crypto provider of its own
//! (the Rust client gives it kuberaft's configuration, `base::tls`), so a test builds its
//! reqwest clients here, which makes ring the process's default provider first. A reqwest
//! client built without it panics, saying no provider is configured.

/// A blocking client's builder.
#[allow(dead_code)]
pub fn blocking() -> reqwest::blocking::ClientBuilder {
    kuberaft::base::tls::install_default_provider();
    reqwest::blocking::Client::builder()
}

/// An async client's builder.
#[allow(dead_code)]
pub fn client() -> reqwest::ClientBuilder {
    kuberaft::base::tls::install_default_provider();
    reqwest::Client::builder()
}
