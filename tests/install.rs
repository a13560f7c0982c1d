//! `packaging/install.sh` against a temporary root (DESTDIR) with a fake binary: where files
//! land and with which modes, that a second run changes nothing, that an edited config
//! survives, that `--uninstall` removes exactly what was installed, and that nothing outside
//! the root is touched (service managers are fakes on PATH that record any call).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn packaging(rel: &str) -> PathBuf {
    repo().join("packaging").join(rel)
}

/// The commands install.sh would call on a live system. Each fake records its name and
/// arguments in `calls`; under DESTDIR the file must never appear.
const SERVICE_TOOLS: &[&str] = &[
    "systemctl",
    "rc-update",
    "rc-service",
    "update-rc.d",
    "chkconfig",
    "pidof",
];

/// One test's world: `root` (the DESTDIR), a fake binary, and a `bin` dir of fake tools.
struct Sandbox {
    dir: PathBuf,
    root: PathBuf,
    binary: PathBuf,
    calls: PathBuf,
}

impl Sandbox {
    fn new(name: &str) -> Sandbox {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("assistd-install-{}-{name}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let root = dir.join("root");
        let bin = dir.join("bin");
        fs::create_dir_all(&root).expect("create root");
        fs::create_dir_all(&bin).expect("create bin");
        let calls = dir.join("calls");
        for tool in SERVICE_TOOLS {
            let path = bin.join(tool);
            fs::write(
                &path,
                format!("#!/bin/sh\necho \"{tool} $*\" >>'{}'\n", calls.display()),
            )
            .expect("write fake tool");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let binary = dir.join("assistd-fake");
        fs::write(&binary, b"#!/bin/sh\necho fake assistd\n").expect("write fake binary");
        Sandbox {
            dir,
            root,
            binary,
            calls,
        }
    }

    /// Runs install.sh with DESTDIR=root and the fake tools first on PATH; fails the test
    /// (printing everything) unless it exits 0.
    fn install(&self, args: &[&str]) -> String {
        let out = self.run(args);
        if !out.status.success() {
            self.fail(args, &out, "install.sh failed");
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn run(&self, args: &[&str]) -> Output {
        let path = format!(
            "{}:{}",
            self.dir.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Command::new("sh")
            .arg(packaging("install.sh"))
            .args(args)
            .env("DESTDIR", &self.root)
            .env("PATH", path)
            .current_dir(&self.dir)
            .output()
            .expect("run sh packaging/install.sh")
    }

    /// `--binary <fake>` plus `args`.
    fn install_fake(&self, args: &[&str]) -> String {
        let binary = self.binary.to_str().expect("utf-8 temp path");
        let mut all = vec!["--binary", binary];
        all.extend_from_slice(args);
        self.install(&all)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn mode(&self, rel: &str) -> u32 {
        fs::metadata(self.path(rel))
            .unwrap_or_else(|e| panic!("{rel}: {e}\n{}", self.listing()))
            .permissions()
            .mode()
            & 0o7777
    }

    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.path(rel))
            .unwrap_or_else(|e| panic!("{rel}: {e}\n{}", self.listing()))
    }

    fn listing(&self) -> String {
        snapshot(&self.root)
            .iter()
            .map(|(p, e)| format!("  {:o} {p}\n", e.mode))
            .collect()
    }

    fn fail(&self, args: &[&str], out: &Output, what: &str) -> ! {
        panic!(
            "{what}\ncommand: DESTDIR={} sh packaging/install.sh {}\nexit: {}\nstdout:\n{}\nstderr:\n{}\nroot:\n{}",
            self.root.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.listing()
        )
    }

    fn assert_no_service_calls(&self) {
        if let Ok(calls) = fs::read_to_string(&self.calls) {
            panic!("install.sh called service tools under DESTDIR:\n{calls}");
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Kept on failure for inspection, like tests/util.rs does.
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

#[derive(Debug, PartialEq)]
struct Entry {
    mode: u32,
    content: Option<Vec<u8>>,
    mtime_ns: i128,
    inode: u64,
}

/// Every path under `root` (relative, "/" separated; directories end in "/") with its
/// mode, contents, mtime and inode: two equal snapshots mean nothing was touched.
fn snapshot(root: &Path) -> BTreeMap<String, Entry> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Entry>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let meta = fs::symlink_metadata(&path).expect("stat");
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .into_owned();
            let is_dir = meta.is_dir();
            out.insert(
                if is_dir { format!("{rel}/") } else { rel },
                Entry {
                    mode: meta.permissions().mode() & 0o7777,
                    content: if is_dir {
                        None
                    } else {
                        Some(fs::read(&path).unwrap_or_default())
                    },
                    mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
                    inode: meta.ino(),
                },
            );
            if is_dir {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn keys(snap: &BTreeMap<String, Entry>) -> Vec<&str> {
    snap.keys().map(String::as_str).collect()
}

/// The files every install puts down, whatever the init.
fn assert_common_layout(sb: &Sandbox) {
    assert_eq!(sb.mode("usr/bin/assistd"), 0o755);
    assert_eq!(
        fs::read(sb.path("usr/bin/assistd")).expect("binary"),
        fs::read(&sb.binary).expect("fake")
    );
    assert_eq!(sb.mode("etc/assistd"), 0o755);
    assert_eq!(sb.mode("etc/assistd/config.json"), 0o644);
    assert_eq!(
        sb.read("etc/assistd/config.json"),
        fs::read_to_string(packaging("config.example.json")).expect("example")
    );
    assert_eq!(sb.mode("etc/assistd/tasks"), 0o700);
    assert_eq!(sb.mode("var/lib/assistd"), 0o711);
    assert_eq!(sb.mode("var/log/assistd"), 0o750);
    sb.assert_no_service_calls();
}

#[test]
fn systemd_install_puts_files_in_place_with_their_modes() {
    let sb = Sandbox::new("systemd");
    sb.install_fake(&["--init", "systemd"]);
    assert_common_layout(&sb);
    assert_eq!(sb.mode("usr/lib/systemd/system/assistd.service"), 0o644);
    let unit = sb.read("usr/lib/systemd/system/assistd.service");
    assert!(unit.contains("ExecStart=/usr/bin/assistd agent"), "{unit}");
    assert!(unit.contains("KillMode=process"), "{unit}");
    assert!(unit.contains("StateDirectory=assistd"), "{unit}");
    assert!(!sb.path("etc/init.d").exists(), "{}", sb.listing());
}

#[test]
fn openrc_install_puts_an_executable_openrc_script() {
    let sb = Sandbox::new("openrc");
    sb.install_fake(&["--init", "openrc"]);
    assert_common_layout(&sb);
    assert_eq!(sb.mode("etc/init.d/assistd"), 0o755);
    assert!(sb
        .read("etc/init.d/assistd")
        .starts_with("#!/sbin/openrc-run\n"));
    assert!(!sb.path("usr/lib/systemd").exists(), "{}", sb.listing());
}

#[test]
fn sysv_install_puts_an_lsb_init_script() {
    let sb = Sandbox::new("sysv");
    sb.install_fake(&["--init", "sysv"]);
    assert_common_layout(&sb);
    assert_eq!(sb.mode("etc/init.d/assistd"), 0o755);
    let script = sb.read("etc/init.d/assistd");
    assert!(script.contains("### BEGIN INIT INFO"), "{script}");
    for verb in ["start)", "stop)", "restart |", "reload)", "status)"] {
        assert!(script.contains(verb), "no {verb} in the sysv script");
    }
}

#[test]
fn a_second_run_changes_nothing() {
    for init in ["systemd", "openrc", "sysv", "busybox", "runit", "none"] {
        let sb = Sandbox::new(&format!("idempotent-{init}"));
        fs::create_dir_all(sb.path("etc")).expect("mkdir");
        fs::write(sb.path("etc/inittab"), "::sysinit:/etc/init.d/rcS\n").expect("inittab");
        sb.install_fake(&["--init", init]);
        let first = snapshot(&sb.root);
        let out = sb.install_fake(&["--init", init]);
        let second = snapshot(&sb.root);
        assert!(
            first == second,
            "{init}: the second run changed the tree\nbefore: {:?}\nafter: {:?}\n{out}",
            keys(&first),
            keys(&second)
        );
        assert!(!out.contains("installed "), "{init}: {out}");
        sb.assert_no_service_calls();
    }
}

#[test]
fn an_edited_config_is_kept_and_the_new_default_goes_beside_it() {
    let sb = Sandbox::new("edited");
    sb.install_fake(&["--init", "systemd"]);
    let edited = "{\"local_dir\": \"/srv/tasks\", \"workers\": 2}\n";
    fs::write(sb.path("etc/assistd/config.json"), edited).expect("edit config");
    let out = sb.install_fake(&["--init", "systemd"]);
    assert_eq!(sb.read("etc/assistd/config.json"), edited);
    assert_eq!(
        sb.read("etc/assistd/config.json.new"),
        fs::read_to_string(packaging("config.example.json")).expect("example")
    );
    assert!(out.contains("config.json.new"), "{out}");
    // Uninstalling keeps the edited config.
    sb.install(&["--uninstall"]);
    assert_eq!(sb.read("etc/assistd/config.json"), edited);
}

#[test]
fn uninstall_removes_what_it_installed_and_nothing_else() {
    for init in ["systemd", "openrc", "sysv", "busybox", "runit"] {
        let sb = Sandbox::new(&format!("uninstall-{init}"));
        // Someone else's files, in the directories install.sh writes to.
        for (rel, text) in [
            ("etc/hostname", "box\n"),
            (
                "etc/inittab",
                "::sysinit:/etc/init.d/rcS\n::askfirst:-/bin/sh\n",
            ),
            ("etc/init.d/other", "#!/bin/sh\n"),
            ("usr/bin/other", "other\n"),
            ("var/lib/other/state", "x\n"),
        ] {
            fs::create_dir_all(sb.path(rel).parent().expect("parent")).expect("mkdir");
            fs::write(sb.path(rel), text).expect("write");
        }
        let before = snapshot(&sb.root);
        sb.install_fake(&["--init", init]);
        if init == "busybox" {
            let tab = sb.read("etc/inittab");
            assert!(tab.contains("::respawn:/usr/bin/assistd agent"), "{tab}");
        }
        sb.install(&["--uninstall"]);
        // Config, state and log directories stay until --purge.
        let mut after = snapshot(&sb.root);
        for kept in [
            "etc/assistd/",
            "etc/assistd/config.json",
            "etc/assistd/tasks/",
            "var/lib/assistd/",
            "var/log/",
            "var/log/assistd/",
        ] {
            assert!(after.remove(kept).is_some(), "{init}: {kept} was not kept");
        }
        // The directories it created but could not remove yet, for --purge to finish.
        after.remove("var/lib/assistd/installed-dirs");
        assert_eq!(keys(&before), keys(&after), "{init}: after --uninstall");
        // Same bytes and modes; /etc/inittab was edited and restored, so its mtime moved.
        for (path, entry) in &before {
            let other = &after[path];
            assert!(
                (entry.mode, &entry.content) == (other.mode, &other.content),
                "{init}: {path} changed"
            );
        }

        sb.install(&["--uninstall", "--purge"]);
        let purged = snapshot(&sb.root);
        assert_eq!(keys(&before), keys(&purged), "{init}: after --purge");
        sb.assert_no_service_calls();
    }
}

#[test]
fn nothing_outside_the_root_is_touched() {
    let sb = Sandbox::new("outside");
    let watched = [
        "/usr/bin/assistd",
        "/etc/assistd",
        "/usr/lib/systemd/system/assistd.service",
        "/etc/init.d/assistd",
        "/etc/sv/assistd",
        "/var/lib/assistd",
        "/var/log/assistd",
        "/usr/share/assistd",
    ];
    let exists = || -> Vec<bool> { watched.iter().map(|p| Path::new(p).exists()).collect() };
    let before = exists();
    let sandbox_before = snapshot(&sb.dir.join("bin"));
    for init in ["systemd", "openrc", "sysv", "busybox", "runit"] {
        sb.install_fake(&["--init", init]);
    }
    sb.install(&["--uninstall", "--purge"]);
    assert_eq!(before, exists(), "{watched:?}");
    assert!(sandbox_before == snapshot(&sb.dir.join("bin")));
    sb.assert_no_service_calls();
}

#[test]
fn without_a_binary_it_says_how_to_get_one() {
    let sb = Sandbox::new("nobinary");
    let out = sb.run(&["--binary", "/nonexistent/assistd", "--init", "none"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/assistd"), "{stderr}");
    assert!(snapshot(&sb.root).is_empty(), "{}", sb.listing());
}

#[test]
fn the_example_config_is_accepted_by_todays_agent() {
    let path = packaging("config.example.json");
    let cfg = assistd::config::Config::load(&path, true)
        .unwrap_or_else(|e| panic!("{}: {}", path.display(), e));
    assert_eq!(cfg.state_dir, PathBuf::from("/var/lib/assistd"));
    assert_eq!(cfg.local_dir, Some(PathBuf::from("/etc/assistd/tasks")));
}

#[test]
fn every_example_key_is_documented() {
    let example: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(packaging("config.example.json")).expect("example"),
    )
    .expect("example is JSON");
    let doc = fs::read_to_string(packaging("config.md")).expect("config.md");
    for key in example.as_object().expect("object").keys() {
        assert!(
            doc.contains(&format!("| `{key}` |")),
            "{key} has no row in packaging/config.md"
        );
    }
}

/// The keys `Config::from_json` matches on: its arms `"key" =>` and `"a" | "b" =>`.
fn accepted_config_keys() -> Vec<String> {
    let src = fs::read_to_string(repo().join("src/config.rs")).expect("src/config.rs");
    let mut keys = Vec::new();
    for line in src.lines() {
        let Some(arm) = line.trim().strip_suffix("=> {") else {
            continue;
        };
        let names: Vec<&str> = arm.split('|').map(str::trim).collect();
        if names.iter().all(|n| {
            n.len() > 2
                && n.starts_with('"')
                && n.ends_with('"')
                && n[1..n.len() - 1]
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_')
        }) {
            keys.extend(names.iter().map(|n| n[1..n.len() - 1].to_string()));
        }
    }
    keys
}

#[test]
fn every_accepted_config_key_is_documented() {
    let keys = accepted_config_keys();
    // The scan must see the parser: a handful of keys known to be there.
    for known in [
        "local_dir",
        "poweroff_command",
        "server",
        "update_public_key",
    ] {
        assert!(
            keys.iter().any(|k| k == known),
            "{known} not found: {keys:?}"
        );
    }
    let doc = fs::read_to_string(packaging("config.md")).expect("config.md");
    for key in &keys {
        assert!(
            doc.contains(&format!("| `{key}` |")),
            "{key} is accepted by src/config.rs but has no row in packaging/config.md"
        );
    }
    // Every mode the installer sets is in config.md's table of what it creates.
    let install = fs::read_to_string(packaging("install.sh")).expect("install.sh");
    for line in install.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let ["mkdir_mode", dir, mode] = words[..] {
            let row = format!("| `{dir}/` | {mode} |");
            assert!(doc.contains(&row), "config.md has no row {row}");
        }
    }
}

/// `dpkg-deb ARGS` (exit 0 required); its stdout.
fn dpkg_deb(args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new("dpkg-deb")
        .args(args)
        .output()
        .expect("run dpkg-deb");
    assert!(
        out.status.success(),
        "dpkg-deb {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_deb_carries_copyright_changelog_md5sums_and_a_maintainer() {
    if Command::new("dpkg-deb").arg("--version").output().is_err() {
        eprintln!("skipped: no dpkg-deb on this machine (apt-get install dpkg)");
        return;
    }
    let sb = Sandbox::new("deb");
    let out_dir = sb.dir.join("deb");
    let out = Command::new("sh")
        .arg(packaging("build-deb.sh"))
        .arg("--binary")
        .arg(&sb.binary)
        .arg("--out")
        .arg(&out_dir)
        .env(
            "PATH",
            format!(
                "{}:{}",
                sb.dir.join("bin").display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .output()
        .expect("run build-deb.sh");
    assert!(
        out.status.success(),
        "build-deb.sh: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    sb.assert_no_service_calls();
    let deb = fs::read_dir(&out_dir)
        .expect("out dir")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("a .deb in the out dir");
    let deb = deb.as_os_str();
    let maintainer = dpkg_deb(&["-f".as_ref(), deb, "Maintainer".as_ref()]);
    assert_eq!(
        maintainer.trim(),
        "assistd maintainers <assistd-maintainers@example.org>"
    );
    let contents = dpkg_deb(&["--contents".as_ref(), deb]);
    for file in [
        "./usr/share/doc/assistd/copyright",
        "./usr/share/doc/assistd/changelog.gz",
        "./usr/bin/assistd",
    ] {
        assert!(
            contents.contains(file),
            "{file} not in the package:\n{contents}"
        );
    }
    // md5sums: one line per file but the conffile, each matching the extracted file.
    let md5sums = dpkg_deb(&["-I".as_ref(), deb, "md5sums".as_ref()]);
    let x = sb.dir.join("x");
    dpkg_deb(&["-x".as_ref(), deb, x.as_os_str()]);
    let listed: Vec<&str> = md5sums
        .lines()
        .map(|l| l.split_once("  ").expect("md5sum line").1)
        .collect();
    assert!(listed.contains(&"usr/bin/assistd"), "{md5sums}");
    assert!(
        listed.contains(&"usr/share/doc/assistd/copyright"),
        "{md5sums}"
    );
    assert!(!listed.contains(&"etc/assistd/config.json"), "{md5sums}");
    fs::write(sb.dir.join("md5sums"), &md5sums).expect("write md5sums");
    let check = Command::new("md5sum")
        .arg("-c")
        .arg(sb.dir.join("md5sums"))
        .current_dir(&x)
        .output()
        .expect("run md5sum -c");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let changelog = Command::new("gzip")
        .arg("-dc")
        .arg(x.join("usr/share/doc/assistd/changelog.gz"))
        .output()
        .expect("run gzip");
    let changelog = String::from_utf8_lossy(&changelog.stdout);
    assert!(
        changelog.starts_with(&format!("assistd ({}) ", env!("CARGO_PKG_VERSION"))),
        "{changelog}"
    );
    // The packaged postinst says when there is no systemd to start the service.
    let postinst = dpkg_deb(&["-I".as_ref(), deb, "postinst".as_ref()]);
    assert!(
        postinst.contains("systemd is not running here, so the service was not started"),
        "{postinst}"
    );
}

#[test]
fn the_shell_scripts_parse() {
    for rel in [
        "install.sh",
        "build-static.sh",
        "train-order.sh",
        "build-deb.sh",
        "sysv/assistd",
        "openrc/assistd",
        "runit/assistd/run",
        "runit/assistd/log/run",
        "debian/postinst",
        "debian/prerm",
        "debian/postrm",
    ] {
        let out = Command::new("sh")
            .arg("-n")
            .arg(packaging(rel))
            .output()
            .expect("run sh -n");
        assert!(
            out.status.success(),
            "{rel}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
