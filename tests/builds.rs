//! What each build offers on the command line: the full build (feature `remote`) has the
//! remote commands; the local-only build (`--no-default-features`) refuses them in one line,
//! before it creates or starts anything.

mod util;

use util::run;
#[cfg(not(feature = "remote"))]
use util::TestDir;

fn output(args: &[&str]) -> (i32, String, String) {
    let out = run(args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[cfg(not(feature = "remote"))]
#[test]
fn the_local_only_build_refuses_remote_commands_in_one_line() {
    let dir = TestDir::new("local-only-refuses");
    let state = dir.path("fresh-state");
    let state = state.to_str().expect("utf-8 path");
    for args in [
        vec!["register", "--state-dir", state],
        vec!["deregister", "--state-dir", state],
        vec!["update", "--check"],
        vec!["agent", "--state-dir", state],
    ] {
        let (code, out, err) = output(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?} printed {out:?}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.contains("needs remote mode, which this build does not have"),
            "{args:?}: {err}"
        );
    }
    assert!(
        !std::path::Path::new(state).exists(),
        "a refused command created the state dir"
    );
    let (code, help, _) = output(&["--help"]);
    assert_eq!(code, 0);
    assert!(help.contains("This build is local-only"), "{help}");
    assert!(!help.contains("assistd register"), "{help}");
}

#[cfg(feature = "remote")]
#[test]
fn the_full_build_offers_the_remote_commands() {
    let (code, help, _) = output(&["--help"]);
    assert_eq!(code, 0);
    for line in [
        "assistd register",
        "assistd update",
        "assistd agent [--server URL]",
    ] {
        assert!(help.contains(line), "--help lacks {line:?}: {help}");
    }
    assert!(!help.contains("local-only"), "{help}");
    // The command exists: its own argument check answers, not the missing-feature line.
    let (code, _, err) = output(&["update"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("update takes one of --check and --apply"),
        "{err}"
    );
}

#[test]
fn both_builds_schedule_locally() {
    let (code, out, err) = output(&[
        "next",
        "rate(1h)",
        "--creation-time",
        "0",
        "--from",
        "1970-01-01T00:30:00Z",
        "--count",
        "1",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "1970-01-01T01:00:00Z\n");
}
