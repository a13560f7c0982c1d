//! The trial of a newly installed agent: the `--version` run of a downloaded binary before it
//! is installed, the marker `<exe>.trial` that the installing agent leaves for the new one,
//! the first-start check that puts `<exe>.old` back when the new binary stopped before it was
//! confirmed, and the versions that failed on this host (`<state-dir>/update-refused`). It
//! never downloads, verifies or installs a binary; the one file it moves is `<exe>.old`, back.
//!
//! The marker sits beside the executable, not in the state dir, so that the check runs before
//! the configuration is read: a new binary that rejects the old configuration is caught too.
//! Its life: the installing agent writes it with `attempts: 0` just before the install; the
//! new binary's first start sets `attempts: 1`; its first successful startup fetch deletes it
//! (and `<exe>.old`). A start that finds `attempts: 1` means the new binary stopped before
//! that (a crash, a kill, a reboot): `<exe>.old` is renamed back, the marker gets `failed`,
//! and the previous binary is exec'd; it logs the failure, remembers the version as refused
//! and deletes the marker.

use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::remote::trust::Version;
use crate::remote::update::{hex, old_path, reexec, Sha256};
use crate::runner::spawn::ChildExit;

/// A new agent that has no successful startup fetch this long after its start is rolled back.
pub const TRIAL_WINDOW: Duration = Duration::from_secs(60);
/// The trial run (`<new> --version`) must end this soon.
pub const TRIAL_RUN_TIMEOUT: Duration = Duration::from_secs(10);
/// The file in the state dir that lists versions which failed here, one per line.
pub const REFUSED_FILE: &str = "update-refused";
/// Versions remembered in `REFUSED_FILE`; the oldest is forgotten first.
const REFUSED_KEEP: usize = 16;
const MAX_MARKER_BYTES: u64 = 4096;
const MAX_VERSION_OUTPUT: usize = 4096;

/// Why a downloaded binary failed its trial run.
#[derive(Debug)]
pub enum TrialError {
    Spawn(io::Error),
    Timeout,
    Exit(ChildExit),
    /// Exit 0, but the first line is not `assistd <version>`.
    NotAssistd(String),
}

impl fmt::Display for TrialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrialError::Spawn(_) => f.write_str("the new binary cannot be started"),
            TrialError::Timeout => write!(
                f,
                "the new binary's --version did not end within {} s",
                TRIAL_RUN_TIMEOUT.as_secs()
            ),
            TrialError::Exit(ChildExit::Code(c)) => {
                write!(f, "the new binary's --version exited with status {c}")
            }
            TrialError::Exit(ChildExit::Signal(s)) => {
                write!(f, "the new binary's --version was killed by signal {s}")
            }
            TrialError::NotAssistd(line) => write!(
                f,
                "the new binary's --version printed {line:?}, not \"assistd <version>\""
            ),
        }
    }
}

impl std::error::Error for TrialError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TrialError::Spawn(e) => Some(e),
            _ => None,
        }
    }
}

/// Runs `<path> --version` (bounded by `TRIAL_RUN_TIMEOUT`) and returns its first line. This
/// catches a binary that cannot start at all, which could not roll itself back later. The
/// printed version is not compared with the offer: the offer's version is what the release
/// signature binds, and what a binary says about itself proves nothing.
pub fn trial_run(path: &Path) -> Result<String, TrialError> {
    let probed = crate::runner::probe::probe(
        path,
        &[OsStr::new("--version")],
        TRIAL_RUN_TIMEOUT,
        MAX_VERSION_OUTPUT,
    )
    .map_err(TrialError::Spawn)?;
    match probed.exit {
        None => return Err(TrialError::Timeout),
        Some(ChildExit::Code(0)) => {}
        Some(other) => return Err(TrialError::Exit(other)),
    }
    let text = String::from_utf8_lossy(&probed.output);
    let first: String = text
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(80)
        .collect();
    if first.starts_with("assistd ") {
        Ok(first)
    } else {
        Err(TrialError::NotAssistd(first))
    }
}

/// What the installing agent leaves for the new binary (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    /// The installed version, as offered.
    pub version: String,
    /// The version that installed it.
    pub from: String,
    /// SHA-256 of the installed binary: a marker only ever applies to that file.
    pub sha256: [u8; 32],
    /// Starts of the new binary so far.
    pub attempts: u32,
    /// Set by the rollback: why the new binary was given up.
    pub failed: Option<String>,
}

/// `<exe>.trial`.
pub fn marker_path(exe: &Path) -> PathBuf {
    let mut name = exe.file_name().unwrap_or_default().to_os_string();
    name.push(".trial");
    exe.with_file_name(name)
}

impl Marker {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::json!({
            "version": self.version,
            "from": self.from,
            "sha256": hex(&self.sha256),
            "attempts": self.attempts,
            "failed": self.failed,
        })
        .to_string()
        .into_bytes()
    }

    /// `None` for anything that is not a marker this code wrote.
    pub fn parse(bytes: &[u8]) -> Option<Marker> {
        let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        let text = |k: &str| v[k].as_str().map(str::to_string);
        Some(Marker {
            version: text("version")?,
            from: text("from")?,
            sha256: crate::remote::update::parse_hex32(v["sha256"].as_str()?)?,
            attempts: u32::try_from(v["attempts"].as_u64()?).ok()?,
            failed: text("failed"),
        })
    }

    /// Atomically, mode 0600.
    pub fn write(&self, exe: &Path) -> io::Result<()> {
        crate::fsutil::write_atomic(&marker_path(exe), &self.to_json(), 0o600)
    }

    /// `Ok(None)` when there is none; `InvalidData` when it is not a marker.
    pub fn read(exe: &Path) -> io::Result<Option<Marker>> {
        let mut bytes = Vec::new();
        match File::open(marker_path(exe)) {
            Ok(f) => f.take(MAX_MARKER_BYTES).read_to_end(&mut bytes)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        Marker::parse(&bytes)
            .map(Some)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not a trial marker"))
    }
}

/// Deletes `<exe>.trial`; a missing one is fine.
pub fn remove_marker(exe: &Path) -> io::Result<()> {
    match fs::remove_file(marker_path(exe)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// SHA-256 of a file, streamed.
pub fn file_sha256(path: &Path) -> io::Result<[u8; 32]> {
    let mut file = File::open(path)?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(hash.finish()),
            Ok(n) => hash.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// What the first-start check found.
#[derive(Debug)]
pub enum FirstStart {
    /// No marker: an ordinary start.
    None,
    /// The new binary's first start (the marker now says `attempts: 1`): confirm it after the
    /// startup fetch, or roll back after `TRIAL_WINDOW` without one.
    Trial(Marker),
    /// The previous binary, back after a rollback: log it and refuse that version from now on.
    Restored(Marker),
    /// A marker that fits nothing here, removed; the text says why.
    Stale(String),
    /// The rollback put `<exe>.old` back but could not exec it: exit, so that the service
    /// manager starts the restored binary.
    ExecFailed(io::Error),
}

/// The first-start check, made before the configuration is read and before any thread
/// exists. Rolling back execs the previous binary, so on that path it only returns when the
/// exec failed. Logging is not set up yet: the one line it writes goes to stderr, and the
/// previous binary logs the rollback properly once it runs.
pub fn first_start(exe: &Path) -> FirstStart {
    let marker = match Marker::read(exe) {
        Ok(None) => return FirstStart::None,
        Ok(Some(marker)) => marker,
        Err(e) => {
            let _ = remove_marker(exe);
            return FirstStart::Stale(format!(
                "{} is unreadable ({e}); removed",
                marker_path(exe).display()
            ));
        }
    };
    if marker.failed.is_some() {
        return FirstStart::Restored(marker);
    }
    match file_sha256(exe) {
        Ok(sha) if sha == marker.sha256 => {}
        other => {
            let _ = remove_marker(exe);
            let why = match other {
                Err(e) => format!("cannot read {} ({e})", exe.display()),
                Ok(_) => format!("{} is not the binary it names", exe.display()),
            };
            return FirstStart::Stale(format!(
                "the trial marker of the update to {} was removed: {why}",
                marker.version
            ));
        }
    }
    if marker.attempts == 0 {
        let next = Marker {
            attempts: 1,
            ..marker
        };
        if let Err(e) = next.write(exe) {
            // Then a crash is not noticed at the next start; the trial window still holds.
            eprintln!(
                "assistd: phase=update cannot update {}: {e}",
                marker_path(exe).display()
            );
        }
        return FirstStart::Trial(next);
    }
    let reason = "the new agent stopped before its first successful startup fetch";
    let old = old_path(exe);
    if let Err(e) = roll_back(exe, &marker, reason) {
        let _ = remove_marker(exe);
        return FirstStart::Stale(format!(
            "the update to {} stopped before it was confirmed, and {} cannot be restored ({e})",
            marker.version,
            old.display()
        ));
    }
    eprintln!(
        "assistd: phase=update {reason}; {} is restored over {} and started",
        old.display(),
        exe.display()
    );
    FirstStart::ExecFailed(reexec(exe, None))
}

/// Renames `<exe>.old` back over `exe`, fsyncs the directory, and only then marks the marker
/// `failed`: a crash in between leaves a marker that no longer matches `exe`, which the next
/// start removes, never a marker that calls the new binary the old one.
pub fn roll_back(exe: &Path, marker: &Marker, reason: &str) -> io::Result<()> {
    let old = old_path(exe);
    fs::rename(&old, exe)?;
    let dir = match exe.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()?;
    Marker {
        failed: Some(reason.to_string()),
        ..marker.clone()
    }
    .write(exe)
}

/// After logging is set up: logs what `first_start` found, and for a restored binary
/// remembers the failed version in the state dir and deletes the marker. Returns the marker of
/// a trial in progress.
pub fn settle(first: FirstStart, exe: &Path, state_root: &Path) -> Option<Marker> {
    match first {
        FirstStart::None | FirstStart::ExecFailed(_) => None,
        FirstStart::Trial(marker) => {
            log::info!(
                "phase=update trial start of {} (installed by {}): {} is restored if this agent stops before its first successful startup fetch, or has none within {} s",
                marker.version,
                marker.from,
                old_path(exe).display(),
                TRIAL_WINDOW.as_secs()
            );
            Some(marker)
        }
        FirstStart::Restored(marker) => {
            // The work first, the line after it: a reader that sees the line finds the
            // refusal recorded and the marker gone.
            let remembered = remember_refused(state_root, &marker.version);
            let unmarked = remove_marker(exe);
            log::error!(
                "phase=update the update from {} to {} failed ({}); rolled back, running {} again; {} will not be installed again",
                marker.from,
                marker.version,
                marker.failed.as_deref().unwrap_or("unknown reason"),
                env!("CARGO_PKG_VERSION"),
                marker.version
            );
            if let Err(e) = remembered {
                log::warn!("phase=update cannot remember the failed version: {e}");
            }
            if let Err(e) = unmarked {
                log::warn!("phase=update cannot remove the trial marker: {e}");
            }
            None
        }
        FirstStart::Stale(why) => {
            log::warn!("phase=update {why}");
            None
        }
    }
}

/// The versions that failed on this host (newest last).
pub fn refused(state_root: &Path) -> Vec<String> {
    let mut text = String::new();
    let read = File::open(state_root.join(REFUSED_FILE))
        .and_then(|f| f.take(64 * 1024).read_to_string(&mut text));
    if read.is_err() {
        return Vec::new();
    }
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// True when `version` is in `list` (as numbers when both parse, else as text).
pub fn is_refused(list: &[String], version: &str) -> bool {
    let wanted = Version::parse(version);
    list.iter().any(|v| match (&wanted, Version::parse(v)) {
        (Some(a), Some(b)) => *a == b,
        _ => v == version.trim(),
    })
}

/// Adds `version` to the refused list (atomically; the oldest beyond `REFUSED_KEEP` go).
pub fn remember_refused(state_root: &Path, version: &str) -> io::Result<()> {
    let mut list = refused(state_root);
    let version: String = version.trim().chars().filter(|c| !c.is_control()).collect();
    if is_refused(&list, &version) {
        return Ok(());
    }
    list.push(version);
    let skip = list.len().saturating_sub(REFUSED_KEEP);
    let mut text = list[skip..].join("\n");
    text.push('\n');
    crate::fsutil::write_atomic(&state_root.join(REFUSED_FILE), text.as_bytes(), 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::tests::TempDir;
    use std::os::unix::fs::PermissionsExt;

    fn marker(sha256: [u8; 32], attempts: u32) -> Marker {
        Marker {
            version: "0.2.0".to_string(),
            from: "0.1.0".to_string(),
            sha256,
            attempts,
            failed: None,
        }
    }

    #[test]
    fn markers_round_trip_and_junk_is_not_one() {
        let m = Marker {
            failed: Some("why".to_string()),
            ..marker([5; 32], 1)
        };
        assert_eq!(Marker::parse(&m.to_json()), Some(m));
        assert_eq!(Marker::parse(b"{}"), None);
        assert_eq!(Marker::parse(b"\xff"), None);
        assert_eq!(
            Marker::parse(br#"{"version":"1","from":"0","sha256":"ab","attempts":0}"#),
            None
        );
    }

    /// `<dir>/assistd` (new) and `<dir>/assistd.old` (old).
    fn installed(name: &str) -> (TempDir, PathBuf, [u8; 32]) {
        let dir = TempDir::new(name);
        let exe = dir.path().join("assistd");
        fs::write(&exe, b"new binary").expect("write");
        fs::write(old_path(&exe), b"old binary").expect("write");
        let sha = file_sha256(&exe).expect("hash");
        (dir, exe, sha)
    }

    #[test]
    fn the_first_start_of_a_new_binary_counts_the_attempt() {
        let (_dir, exe, sha) = installed("trial-first");
        assert!(matches!(first_start(&exe), FirstStart::None));
        marker(sha, 0).write(&exe).expect("write");
        match first_start(&exe) {
            FirstStart::Trial(m) => assert_eq!(m.attempts, 1),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            Marker::read(&exe).expect("read").map(|m| m.attempts),
            Some(1)
        );
        assert_eq!(fs::read(&exe).expect("read"), b"new binary");
    }

    #[test]
    fn a_marker_for_another_binary_is_removed_and_nothing_moves() {
        let (_dir, exe, mut sha) = installed("trial-stale");
        sha[0] ^= 1;
        marker(sha, 1).write(&exe).expect("write");
        assert!(matches!(first_start(&exe), FirstStart::Stale(_)));
        assert!(!marker_path(&exe).exists());
        assert_eq!(fs::read(&exe).expect("read"), b"new binary");
        assert!(old_path(&exe).exists());
        fs::write(marker_path(&exe), b"junk").expect("write");
        assert!(matches!(first_start(&exe), FirstStart::Stale(_)));
        assert!(!marker_path(&exe).exists());
    }

    #[test]
    fn a_rollback_restores_the_old_binary_before_it_marks_the_failure() {
        let (_dir, exe, sha) = installed("trial-rollback");
        roll_back(&exe, &marker(sha, 1), "it died").expect("rolled back");
        assert_eq!(fs::read(&exe).expect("read"), b"old binary");
        assert!(!old_path(&exe).exists());
        let m = Marker::read(&exe).expect("read").expect("marker");
        assert_eq!(m.failed.as_deref(), Some("it died"));
        // What the restored binary sees at its start.
        assert!(matches!(first_start(&exe), FirstStart::Restored(_)));
    }

    #[test]
    fn without_the_old_binary_there_is_nothing_to_roll_back_to() {
        let (_dir, exe, sha) = installed("trial-no-old");
        fs::remove_file(old_path(&exe)).expect("remove");
        marker(sha, 1).write(&exe).expect("write");
        assert!(matches!(first_start(&exe), FirstStart::Stale(_)));
        assert_eq!(fs::read(&exe).expect("read"), b"new binary");
        assert!(!marker_path(&exe).exists());
    }

    #[test]
    fn a_restored_binary_remembers_the_version_and_drops_the_marker() {
        let (dir, exe, sha) = installed("trial-restored");
        let state = dir.path().join("state");
        fs::create_dir(&state).expect("mkdir");
        let m = Marker {
            failed: Some("it died".to_string()),
            ..marker(sha, 1)
        };
        m.write(&exe).expect("write");
        assert!(settle(FirstStart::Restored(m), &exe, &state).is_none());
        assert!(!marker_path(&exe).exists());
        let list = refused(&state);
        assert!(is_refused(&list, "0.2.0"));
        assert!(is_refused(&list, "0.2"));
        assert!(!is_refused(&list, "0.2.1"));
        for i in 0..20 {
            remember_refused(&state, &format!("1.{i}")).expect("remember");
        }
        let list = refused(&state);
        assert_eq!(list.len(), REFUSED_KEEP);
        assert!(is_refused(&list, "1.19") && !is_refused(&list, "0.2.0"));
    }

    #[test]
    fn the_trial_run_wants_an_assistd_that_exits_0() {
        let dir = TempDir::new("trial-run");
        let script = |name: &str, body: &str| {
            let path = dir.path().join(name);
            fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
            path
        };
        assert_eq!(
            trial_run(&script("good", "echo assistd 9.9.9")).expect("passes"),
            "assistd 9.9.9"
        );
        assert!(matches!(
            trial_run(&script("dies", "exit 1")),
            Err(TrialError::Exit(ChildExit::Code(1)))
        ));
        assert!(matches!(
            trial_run(&script("other", "echo something else")),
            Err(TrialError::NotAssistd(_))
        ));
        assert!(matches!(
            trial_run(&dir.path().join("missing")),
            Err(TrialError::Spawn(_))
        ));
    }
}
