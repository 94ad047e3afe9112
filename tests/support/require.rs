//! The one rule for a test that cannot run here because something it needs is missing (a tool,
//! root, a kernel feature): under `CI=true` the test FAILS with a message naming what is
//! missing; anywhere else it prints `SKIPPED <test>: needs <what>` and returns (it passes).
//! `CI` counts only when it is exactly `true`, as in scripts/test. Every test binary with such a
//! guard includes this file (`#[path = "../support/require.rs"] mod require;`) and calls
//! [`available`] or [`cannot_run`]; none reads `CI` itself.

/// Whether the rule is strict here: the environment variable `CI` is exactly `true`.
pub fn in_ci() -> bool {
    strict(std::env::var("CI").ok().as_deref())
}

fn strict(ci: Option<&str>) -> bool {
    ci == Some("true")
}

/// True when `present`; otherwise applies the rule for a test that needs `needs` (under
/// `CI=true` it panics) and returns false: the caller returns at once.
pub fn available(present: bool, needs: &str) -> bool {
    if !present {
        cannot_run(needs);
    }
    present
}

/// The test that calls this cannot run because it needs `needs`: under `CI=true` it panics,
/// elsewhere it prints `SKIPPED <test>: needs <needs>` and returns; the caller then returns.
pub fn cannot_run(needs: &str) {
    match verdict(in_ci(), &test_name(), needs) {
        Ok(line) => eprintln!("{line}"),
        Err(message) => panic!("{message}"),
    }
}

/// The running test's name: libtest names each test's thread after the test.
fn test_name() -> String {
    match std::thread::current().name() {
        Some(name) if name != "main" => name.to_string(),
        _ => "this test".to_string(),
    }
}

/// Ok(the SKIPPED line) outside CI, Err(the failure message) under `CI=true`.
fn verdict(ci: bool, test: &str, needs: &str) -> Result<String, String> {
    if ci {
        Err(format!(
            "{test} cannot run: it needs {needs}. Under CI=true a test that cannot run fails \
             (scripts/test installs what the tests need when it runs as root)"
        ))
    } else {
        Ok(format!("SKIPPED {test}: needs {needs}"))
    }
}

/// Runs this test binary again with only test `test` (exact name), with `env` set on top of
/// the current environment, its output not captured; returns (exit code, stdout + stderr).
/// Tests use it to see the rule at work through a real guard.
#[allow(dead_code)]
pub fn rerun_self(test: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut command = std::process::Command::new(exe);
    command.args([test, "--exact", "--nocapture", "--test-threads=1"]);
    command.envs(env.iter().copied());
    let output = command.output().expect("run the test binary again");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code(), text)
}

/// Runs `test` (whose guard needs nftables) again with no `nft` on the PATH: under `CI=true` it
/// must fail naming nftables, elsewhere pass saying SKIPPED.
#[allow(dead_code)]
pub fn assert_the_rule_without_nft(test: &str) {
    let (code, out) = rerun_self(test, &[("PATH", "/nonexistent"), ("CI", "true")]);
    assert_eq!(code, Some(101), "{out}");
    assert!(out.contains(&format!("{test} cannot run: it needs nftables")), "{out}");
    let (code, out) = rerun_self(test, &[("PATH", "/nonexistent"), ("CI", "false")]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&format!("SKIPPED {test}: needs nftables")), "{out}");
}

#[test]
fn the_rule_fails_only_under_ci_true_and_names_what_is_missing() {
    assert!(strict(Some("true")));
    for value in [None, Some(""), Some("false"), Some("0"), Some("TRUE "), Some("yes")] {
        assert!(!strict(value), "{value:?}");
    }
    let failed = verdict(true, "t::x", "nftables (`nft`)").expect_err("fails under CI=true");
    assert!(failed.starts_with("t::x cannot run: it needs nftables (`nft`)"), "{failed}");
    assert_eq!(verdict(false, "t::x", "root").as_deref(), Ok("SKIPPED t::x: needs root"));
}
