//! A small W3C WebDriver client for browser tests: headless Chromium through chromedriver
//! (Debian's `chromium` and `chromium-driver`, which scripts/test installs), driven over
//! chromedriver's HTTP API with the tests' own blocking client. The driver and the browser
//! listen on loopback only and are stopped when the `Browser` is dropped, also when a test
//! fails.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Whether this machine can run a browser test.
pub fn available() -> bool {
    Path::new(CHROMIUM).is_file() && Path::new(CHROMEDRIVER).is_file()
}

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::blocking::Client,
    _profile: tempfile::TempDir,
    /// Where screenshots go.
    pub artifacts: PathBuf,
}

/// A port free on both 127.0.0.1 and ::1 (when this machine has IPv6 loopback) just now.
fn free_loopback_port() -> u16 {
    for _ in 0..100 {
        let port =
            TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port");
        let v6 = TcpListener::bind(("::1", port));
        if v6.is_ok() || v6.is_err_and(|e| e.kind() != std::io::ErrorKind::AddrInUse) {
            return port;
        }
    }
    panic!("no loopback port free on both IPv4 and IPv6 in 100 tries");
}

impl Browser {
    /// Starts chromedriver on a free loopback port and a headless Chromium session in a window
    /// of `width`×`height`.
    pub fn start(artifacts: &Path, width: u32, height: u32) -> Browser {
        let profile = tempfile::tempdir().expect("a profile directory");
        // What chromedriver says goes to a file, so that a driver that does not come up says why.
        let log_path = profile.path().join("chromedriver.log");
        let said = || std::fs::read_to_string(&log_path).unwrap_or_default();
        let http = crate::http_support::blocking().timeout(Duration::from_secs(60)).build().expect("http client");
        // chromedriver listens on IPv4 and IPv6 loopback and exits when either port is taken
        // (CI saw it once: the port free on 127.0.0.1 was taken on ::1); then another port.
        const ATTEMPTS: usize = 5;
        let mut attempt = 0;
        let (driver, base) = loop {
            attempt += 1;
            let port = free_loopback_port();
            let log = std::fs::File::create(&log_path).expect("chromedriver's log");
            let mut driver = Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .arg("--allowed-ips=127.0.0.1")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("chromedriver's log"))
                .stderr(log)
                .spawn()
                .expect("start chromedriver");
            let base = format!("http://127.0.0.1:{port}");
            // Once in CI (2 cores, cluster tests beside it) it did not answer within 20 s; it
            // gets a minute, and a driver that exits or never answers is reported with what it
            // said.
            let deadline = Instant::now() + Duration::from_secs(60);
            let answered = loop {
                let status = http.get(format!("{base}/status")).timeout(Duration::from_secs(2)).send();
                if status.is_ok_and(|r| r.status().is_success()) {
                    break true;
                }
                if let Ok(Some(exit)) = driver.try_wait() {
                    let taken = said().contains("Address already in use");
                    assert!(
                        taken && attempt < ATTEMPTS,
                        "chromedriver exited ({exit}) before it answered; it said: {}",
                        said()
                    );
                    break false;
                }
                if Instant::now() >= deadline {
                    let _ = driver.kill();
                    let _ = driver.wait();
                    panic!("chromedriver did not answer within 60 s; it said: {}", said());
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            if answered {
                break (driver, base);
            }
        };
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
            http,
            _profile: profile,
            artifacts: artifacts.to_path_buf(),
        };
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--hide-scrollbars".into(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", browser._profile.path().display()),
        ];
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let answer = browser.call("POST", "/session", capabilities);
        browser.session = answer["sessionId"].as_str().expect("a session id").to_string();
        std::fs::create_dir_all(artifacts).expect("the artifacts directory");
        browser
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body),
        };
        let response = request.send().unwrap_or_else(|e| panic!("webdriver {method} {path}: {e}"));
        let status = response.status();
        let value: Value = response.json().unwrap_or(Value::Null);
        assert!(status.is_success(), "webdriver {method} {path}: {status} {value}");
        value["value"].clone()
    }

    fn session_call(&self, method: &str, path: &str, body: Value) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    pub fn goto(&self, url: &str) {
        self.session_call("POST", "/url", json!({ "url": url }));
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page; its return value.
    pub fn eval(&self, script: &str, args: Value) -> Value {
        self.session_call("POST", "/execute/sync", json!({ "script": script, "args": args }))
    }

    /// Polls `script` every 200 ms until it returns something other than null or false; fails
    /// after `timeout`, with a screenshot named `what`.
    pub fn wait(&self, what: &str, timeout: Duration, script: &str) -> Value {
        let start = Instant::now();
        loop {
            let value = self.eval(script, json!([]));
            if !value.is_null() && value != Value::Bool(false) {
                return value;
            }
            if start.elapsed() > timeout {
                let shot = self.screenshot(&format!("timeout-{}", what.replace(' ', "-")));
                panic!("timed out after {timeout:?} waiting until {what} (page: {})", shot.display());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A PNG of the window, saved as `<artifacts>/<name>.png`; its path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let data = self.session_call("GET", "/screenshot", Value::Null);
        let png = kuberaft::base::base64::decode_base64(data.as_str().unwrap_or_default()).expect("a base64 PNG");
        let path = self.artifacts.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }

    /// Scrolls the element at `css` to the top of the window.
    pub fn scroll_to(&self, css: &str) {
        self.eval("document.querySelector(arguments[0]).scrollIntoView({block: 'start'});", json!([css]));
    }

    pub fn resize(&self, width: u32, height: u32) {
        self.session_call("POST", "/window/rect", json!({ "width": width, "height": height }));
    }

    /// The element at `css`, clicked as a user clicks it.
    pub fn click(&self, css: &str) {
        let element = self.session_call("POST", "/element", json!({ "using": "css selector", "value": css }));
        let id = element.as_object().and_then(|o| o.values().next()).and_then(Value::as_str).expect("an element id");
        self.session_call("POST", &format!("/element/{id}/click"), json!({}));
    }

    /// Types `text` into the element at `css` (after clearing it).
    pub fn type_into(&self, css: &str, text: &str) {
        let element = self.session_call("POST", "/element", json!({ "using": "css selector", "value": css }));
        let id = element.as_object().and_then(|o| o.values().next()).and_then(Value::as_str).expect("an element id");
        self.session_call("POST", &format!("/element/{id}/clear"), json!({}));
        self.session_call("POST", &format!("/element/{id}/value"), json!({ "text": text }));
    }

    /// Presses keys in the focused element (`\u{E004}` is Tab, `\u{E007}` Enter).
    pub fn keys(&self, keys: &str) {
        let actions: Vec<Value> = keys
            .chars()
            .flat_map(|c| {
                [json!({"type": "keyDown", "value": c.to_string()}), json!({"type": "keyUp", "value": c.to_string()})]
            })
            .collect();
        self.session_call(
            "POST",
            "/actions",
            json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]}),
        );
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.http.delete(format!("{}/session/{}", self.base, self.session)).send();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
