//! The live view (`GET /ui`, DESIGN.md §4.9) against a real three-member cluster: its JSON
//! (`/ui/v1/member`, `/ui/v1/stream`) directly, and the page itself in headless Chromium
//! through WebDriver, with a screenshot of each step kept in `target/ui-artifacts/`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{wait_for, Cluster};
use crate::webdriver::Browser;
use crate::{nft, require, require_nft, ELECTION};

/// Where the browser test's screenshots go: `target/ui-artifacts` (CARGO_TARGET_TMPDIR is
/// inside the target directory), or `$UI_ARTIFACTS`.
fn artifacts() -> PathBuf {
    std::env::var_os("UI_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../ui-artifacts"))
}

fn view(c: &Cluster, i: usize, since: u64) -> Value {
    let url = format!("{}/ui/v1/member?since={since}", c.members[i].client_url());
    c.http.get(url).send().expect("GET /ui/v1/member").json().expect("a view")
}

/// The first `cluster` event of a member's stream, read from the raw SSE text.
fn first_stream_event(c: &Cluster, i: usize) -> Value {
    let url = format!("{}/ui/v1/stream", c.members[i].client_url());
    let response = c.http.get(url).send().expect("GET /ui/v1/stream");
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut lines = BufReader::new(response).lines();
    let mut event = String::new();
    for _ in 0..100 {
        let line = lines.next().expect("the stream goes on").expect("a line");
        if let Some(kind) = line.strip_prefix("event: ") {
            event = kind.to_string();
        } else if let Some(data) = line.strip_prefix("data: ") {
            assert_eq!(event, "cluster");
            return serde_json::from_str(data).expect("JSON data");
        }
    }
    panic!("no event in 100 lines");
}

/// The member endpoints of the view: the page and its assets (nothing from elsewhere), each
/// member's view of itself with the timeline of the election that made the leader, and the
/// stream of one member carrying every member's view; a kill and a restart appear on the
/// timeline as a new campaign and leader.
#[test]
fn the_live_view_serves_its_page_and_every_members_view_from_one_member() {
    let mut c = Cluster::new(159, 3);
    c.bootstrap();
    let (leader, term) = c.wait_leader(ELECTION);
    // Until then a member's client URL may not be known to the others yet.
    c.wait_settled(leader, ELECTION);
    let url = c.members[leader].client_url();
    let page = c.http.get(format!("{url}/ui")).send().expect("GET /ui");
    assert_eq!(page.status().as_u16(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert!(page.headers()["content-security-policy"].to_str().unwrap().starts_with("default-src 'self'"));
    assert!(page.text().unwrap().contains("<script src=\"/ui/app.js\""));
    for (asset, kind) in [("app.js", "text/javascript"), ("app.css", "text/css")] {
        let response = c.http.get(format!("{url}/ui/{asset}")).send().expect("an asset");
        assert_eq!(response.status().as_u16(), 200, "{asset}");
        assert!(response.headers()["content-type"].to_str().unwrap().starts_with(kind), "{asset}");
    }
    let bad = c.http.get(format!("{url}/ui/v1/member?since=x")).send().expect("a bad query");
    assert_eq!(bad.status().as_u16(), 400, "a bad query is refused");

    let own = view(&c, leader, 0);
    assert_eq!(own["status"]["role"], "leader");
    assert_eq!(own["status"]["term"], term);
    assert_eq!(own["matched"].as_object().map(|m| m.len()), Some(3), "the leader's match index of every member");
    let timeline = own["timeline"].as_array().expect("a timeline");
    let campaigns: Vec<&Value> = timeline.iter().filter(|e| e["kind"] == "campaign" && e["forTerm"] == term).collect();
    let causes: Vec<&Value> = campaigns.iter().map(|e| &e["cause"]).collect();
    assert_eq!(causes, ["pre_vote", "election_after_pre_vote"], "the winning election: {timeline:?}");
    let myself = c.member_id(leader).expect("the leader's id");
    assert!(timeline.iter().any(|e| e["kind"] == "leader" && e["leader"] == myself.as_str() && e["term"] == term));
    let newest = timeline.last().and_then(|e| e["seq"].as_u64()).expect("numbered events");
    assert_eq!(view(&c, leader, newest)["timeline"], json!([]), "`since` leaves out what the reader has");
    let follower = (leader + 1) % 3;
    let theirs = view(&c, follower, 0);
    assert_eq!(theirs["status"]["role"], "follower");
    assert_eq!(theirs["matched"], json!({}), "a follower knows no match indexes");
    wait_for("a rate sample", ELECTION, || {
        view(&c, follower, 0)["samples"].as_array().filter(|s| !s.is_empty()).cloned()
    });

    let event = first_stream_event(&c, follower);
    assert_eq!(event["servedBy"], c.member_id(follower).unwrap().as_str());
    let members = event["members"].as_array().expect("members");
    assert_eq!(members.len(), 3);
    for m in members {
        assert_eq!(m["view"]["status"]["term"], term, "every member's own view: {m}");
    }

    c.kill(leader);
    let (new_leader, new_term) = c.wait_leader(ELECTION);
    assert!(new_term > term);
    let timeline = view(&c, new_leader, 0)["timeline"].as_array().cloned().unwrap_or_default();
    assert!(
        timeline.iter().any(|e| e["kind"] == "campaign" && e["forTerm"] == new_term),
        "the new leader's campaign: {timeline:?}"
    );
    let other = (0..3).find(|i| *i != leader && *i != new_leader).unwrap();
    let event = first_stream_event(&c, other);
    let down = event["members"].as_array().unwrap().iter().find(|m| m["name"] == c.members[leader].name.as_str());
    assert!(down.is_some_and(|m| m["error"].is_string() && m["view"].is_null()), "the killed member: {event}");
}

/// The page in headless Chromium (issue 18's must-show): three members and one leader with the
/// term of `/v1/status`; SIGKILL of the leader shows the new leader, the higher term and the
/// election on the timeline; a write through the CLI appears in the key browser and the watched
/// prefix; a partitioned follower's lag grows and shrinks after healing; the page says when its
/// member is down and offers the others; it fits a phone-width window. A screenshot per step.
#[test]
fn the_live_view_in_a_browser_follows_elections_writes_and_a_partition() {
    if !require::available(
        crate::webdriver::available(),
        "chromium and chromedriver (Debian's chromium, chromium-driver)",
    ) || !require_nft()
    {
        return;
    }
    let mut c = Cluster::new(160, 3);
    c.bootstrap();
    let (leader, term) = c.wait_leader(ELECTION);
    // The page is served by a follower, which stays up throughout.
    let served = (leader + 1) % 3;
    let dir = artifacts();
    let browser = Browser::start(&dir, 1280, 800);
    browser.goto(&format!("{}/ui", c.members[served].client_url()));

    // 1. Three members, one leader, the term of /v1/status.
    browser.wait(
        "three members and one leader",
        ELECTION,
        "const rows = [...document.querySelectorAll('#members tbody tr')];
         return rows.length === 3 && rows.filter(r => r.dataset.role === 'leader').length === 1;",
    );
    let status = c.status(served).expect("status");
    let shown = browser.eval(
        "return [document.getElementById('leader-name').textContent, document.getElementById('leader-term').textContent];",
        json!([]),
    );
    assert_eq!(shown, json!([status["leader"], status["term"].to_string()]));
    assert_eq!(status["term"], term);
    assert_eq!(browser.eval("return document.getElementById('connection').textContent", json!([])), "live");
    let shot = browser.screenshot("1-three-members");
    eprintln!("screenshot: {}", shot.display());

    // 2. SIGKILL the leader: a new leader, a higher term, the election on the timeline.
    let old_name = c.members[leader].name.clone();
    c.kill(leader);
    let (new_leader, new_term) = c.wait_leader(ELECTION);
    assert!(new_term > term);
    let new_name = c.members[new_leader].name.clone();
    browser.wait(
        "the new leader and term",
        ELECTION,
        &format!(
            "return document.getElementById('leader-name').textContent === '{new_name}'
                 && document.getElementById('leader-term').textContent === '{new_term}';"
        ),
    );
    browser.wait(
        "the election on the timeline",
        ELECTION,
        &format!(
            "return [...document.querySelectorAll('#timeline li[data-kind=campaign]')]
                 .some(li => li.dataset.term >= {term} && li.textContent.includes('for term {new_term}'))
               && !!document.querySelector('#terms li[data-term=\"{new_term}\"]');"
        ),
    );
    let down_row = browser.eval(
        &format!("const r = [...document.querySelectorAll('#members tbody tr')].find(r => r.textContent.includes('{old_name}')); return r && r.dataset.role;"),
        json!([]),
    );
    assert_eq!(down_row, "down", "the killed member is shown down");
    browser.scroll_to("#h-timeline");
    eprintln!("screenshot: {}", browser.screenshot("2-new-leader-after-sigkill").display());

    // Back to three members for what follows.
    let initial = c.initial_cluster(&[0, 1, 2]);
    c.start(leader, &initial, "existing");
    c.wait_leader(ELECTION);
    let (leader, _) = c.wait_leader(ELECTION);
    browser.wait(
        "three members up",
        ELECTION,
        "return [...document.querySelectorAll('#members tbody tr')].filter(r => r.dataset.role !== 'down').length === 3;",
    );

    // 3. A write through the CLI appears in the key browser and in the watched prefix.
    browser.type_into("#prefix", "/ui-test/");
    browser.click("#watch-prefix");
    browser.wait(
        "the watch is on",
        ELECTION,
        "return document.getElementById('watch-prefix').getAttribute('aria-pressed') === 'true';",
    );
    std::thread::sleep(Duration::from_millis(300));
    let put = Command::new(env!("CARGO_BIN_EXE_kuberaft"))
        .args(["kv", "put", "/ui-test/greeting", "hello from the CLI"])
        .args(["--endpoints", &c.members[leader].client_url()])
        .output()
        .expect("kuberaft kv put");
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    browser.wait(
        "the write in the watched prefix",
        ELECTION,
        "return [...document.querySelectorAll('#watch-log li[data-type=PUT]')].some(li => li.dataset.key === '/ui-test/greeting' && li.textContent.includes('hello from the CLI'));",
    );
    browser.click("#list-keys");
    browser.wait(
        "the key in the key browser",
        ELECTION,
        "return !!document.querySelector('#keys tbody tr[data-key=\"/ui-test/greeting\"]');",
    );
    browser.click("#keys tbody tr[data-key=\"/ui-test/greeting\"] button");
    let value = browser.wait(
        "the key's value and revisions",
        ELECTION,
        "const v = document.getElementById('key-value'); return v && v.textContent;",
    );
    assert_eq!(value, "hello from the CLI");
    eprintln!("screenshot: {}", browser.screenshot("3-cli-write-in-key-browser-and-watch").display());

    // 4. A partitioned follower's lag grows, then shrinks after healing.
    let follower = (0..3).find(|i| *i != leader && *i != served).unwrap();
    let follower_id = c.member_id(follower).expect("id");
    let others: Vec<String> = (0..3).filter(|i| *i != follower).map(|i| c.members[i].ip.clone()).collect();
    let partition = nft::Faults::new("kuberaft_test_160");
    partition.split(&[c.members[follower].ip.clone()], &others);
    let lag_script = format!("const li = document.querySelector('#replication li[data-id=\"{follower_id}\"]'); return li ? Number(li.dataset.lag) : null;");
    let started = Instant::now();
    let mut n = 0;
    let grown = loop {
        n += 1;
        c.put_ok(leader, &format!("ui-lag-{n}"), "v");
        let lag = browser.eval(&lag_script, json!([])).as_u64().unwrap_or(0);
        if lag >= 20 {
            break lag;
        }
        assert!(started.elapsed() < ELECTION, "the lag did not grow on the page (at {lag} after {n} writes)");
    };
    eprintln!("lag while partitioned: {grown} entries");
    let share = browser.eval(
        &format!("const li = document.querySelector('#replication li[data-id=\"{follower_id}\"]');
                  return li.querySelector('.bar > span').getBoundingClientRect().width / li.querySelector('.bar').getBoundingClientRect().width;"),
        json!([]),
    );
    assert!(share.as_f64().is_some_and(|f| f < 0.95), "the bar shows the follower behind: {share}");
    browser.scroll_to("#h-members");
    eprintln!("screenshot: {}", browser.screenshot("4-partitioned-follower-lags").display());
    partition.heal();
    browser.wait(
        "the follower catches up on the page",
        ELECTION,
        &format!("const li = document.querySelector('#replication li[data-id=\"{follower_id}\"]'); return li && li.dataset.lag === '0';"),
    );
    eprintln!("screenshot: {}", browser.screenshot("5-healed-follower-caught-up").display());

    // Keyboard: Tab reaches the prefix field and the buttons.
    let focused =
        browser.eval("document.getElementById('prefix').focus(); return document.activeElement.id;", json!([]));
    assert_eq!(focused, "prefix");
    browser.keys("\u{E004}");
    assert_eq!(browser.eval("return document.activeElement.id", json!([])), "list-keys");

    // A phone-width window: the page fits its width.
    browser.resize(390, 844);
    let overflow = browser.wait(
        "the narrow layout",
        Duration::from_secs(10),
        "return window.innerWidth <= 400 && [document.documentElement.scrollWidth - window.innerWidth];",
    );
    assert_eq!(overflow, json!([0]), "nothing wider than a phone's window");
    browser.scroll_to("#h-members");
    eprintln!("screenshot: {}", browser.screenshot("6-phone-width").display());
    browser.resize(1280, 800);

    // 5. The member the page talks to goes down: the page says so and offers the others.
    c.kill(served);
    browser.wait(
        "the page says its member is down",
        ELECTION,
        "return !document.getElementById('down').hidden && document.getElementById('down-others').children.length === 2
            && document.querySelector('main').classList.contains('stale');",
    );
    browser.scroll_to("body");
    eprintln!("screenshot: {}", browser.screenshot("7-member-down-offers-others").display());
}

/// `kuberaft dev` prints the view's URL at the top, and `--open` starts `$BROWSER` on it (here
/// a script that writes down what it was given); the URL serves the page. Ports 25379-25380 of
/// 127.0.0.1.
#[test]
fn kuberaft_dev_prints_the_view_url_and_open_starts_a_browser_on_it() {
    let dir = tempfile::tempdir().expect("dir");
    let opened = dir.path().join("opened");
    let script = dir.path().join("browser.sh");
    std::fs::write(&script, format!("#!/bin/sh\necho \"$1\" > {}\n", opened.display())).expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let mut dev = crate::tls::Dev::start_with_env(
        &["--replicas", "1", "--base-port", "25379", "--open"],
        &[("BROWSER", script.to_str().unwrap())],
    );
    let url = "http://127.0.0.1:25379/ui";
    wait_for("the URL in the banner", ELECTION, || dev.text().contains(&format!("live view: {url}\n")).then_some(()));
    let given = wait_for("the browser started", ELECTION, || std::fs::read_to_string(&opened).ok());
    assert_eq!(given.trim(), url);
    let http = crate::http_support::blocking().timeout(Duration::from_secs(5)).build().expect("client");
    let page = wait_for("the page", ELECTION, || http.get(url).send().ok().filter(|r| r.status().is_success()));
    assert!(page.text().unwrap_or_default().contains("<title>kuberaft</title>"));
    assert!(dev.stop(), "dev stops cleanly: {}", dev.text());
}
