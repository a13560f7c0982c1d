//! Remote mode beyond run tasks, end to end against the double: send-file tasks (spec §8.1),
//! task signatures with the RSA test vector (spec §7), and hybrid registration with the signed
//! `x-acs-*` headers it brings (spec §2.2).

mod support;
mod util;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use md5::{Digest, Md5};
use rsa::pkcs8::DecodePublicKey;
use rsa::{Pkcs1v15Sign, RsaPublicKey};

use assistd::runner::params::decode_base64;
use support::server::{
    base64, rsa_task_signature, shell_entry, task_list, Request, Server, DEREGISTER, NOTIFY,
    OUTPUT, REGISTER, REGISTERED_ID, SIGN_CERT, TASK_LIST, VECTOR_CONTENT, VECTOR_INSTANCE_ID,
    VECTOR_USER_ID,
};
use support::{
    about, expect, expect_kick_channel, expect_kick_reply, remote_args, spawn_remote, start_remote,
};
use util::{bin, TestDir};

const FINISH: &str = "/luban/api/v1/task/finish";
const INVALID: &str = "/luban/api/v1/task/invalid";

fn md5_hex(text: &str) -> String {
    Md5::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A `file` entry of a task list; `signature: None` is the right MD5 of the base64 content.
fn file_entry(
    id: &str,
    name: &str,
    body: &str,
    mode: &str,
    dest: &Path,
    sig: Option<&str>,
) -> String {
    file_entry_with(id, name, body, mode, dest, sig, "")
}

/// `file_entry` with more task fields (`extra` starts with a comma).
fn file_entry_with(
    id: &str,
    name: &str,
    body: &str,
    mode: &str,
    dest: &Path,
    sig: Option<&str>,
    extra: &str,
) -> String {
    let content = base64(body.as_bytes());
    let signature = sig.map(str::to_string).unwrap_or_else(|| md5_hex(&content));
    format!(
        r#"{{"task":{{"taskID":"{id}","name":"{name}","content":"{content}","contentType":"Base64","mode":"{mode}","overwrite":false,"destination":"{}","signature":"{signature}","timeout":60{extra}}},"output":{OUTPUT}}}"#,
        dest.display()
    )
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn lchown(p: &Path, uid: u32) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).expect("path");
    // SAFETY: a NUL-terminated path.
    assert_eq!(
        unsafe { libc::lchown(c.as_ptr(), uid, uid) },
        0,
        "lchown {p:?}"
    );
}

/// Review item 7: root wrote through a symlink an unprivileged user planted on the
/// destination path. Now a link or directory another user owns is refused (`FileNameInvalid`)
/// and nothing is written where it points; the user a file is for may own its directory.
#[test]
fn send_file_never_writes_through_another_users_link_or_directory() {
    if !is_root() {
        eprintln!("skipped: needs root to plant files owned by daemon");
        return;
    }
    let dir = TestDir::new("sendfile-links");
    let server = Server::start();
    let target = dir.path("etc");
    std::fs::create_dir(&target).expect("mkdir target");
    let link = dir.path("daemon-link");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    lchown(&link, 1);
    let theirs = dir.path("daemon-home");
    std::fs::create_dir(&theirs).expect("mkdir home");
    lchown(&theirs, 1);
    let owner = r#","owner":"daemon","group":"daemon""#;
    server.push(
        TASK_LIST,
        task_list(
            &[],
            &[],
            &[],
            &[
                file_entry("f-link", "passwd", "evil\n", "0644", &link, None),
                file_entry("f-below", "x", "evil\n", "0644", &link.join("sub"), None),
                file_entry("f-theirs", "root-file", "x\n", "0644", &theirs, None),
                file_entry_with("f-for-them", "note", "hi\n", "0644", &theirs, None, owner),
            ],
        ),
    );
    let agent = start_remote(&dir, &server, &[]);
    for id in ["f-link", "f-below", "f-theirs"] {
        let inv = expect(&agent, &server, &format!("invalid {id}"), |r| {
            about(r, INVALID, id)
        });
        assert!(
            inv.query.contains("&param=FileNameInvalid&"),
            "{id}: {}",
            inv.query
        );
    }
    let ok = expect(&agent, &server, "finish f-for-them", |r| {
        about(r, FINISH, "f-for-them")
    });
    assert_eq!(
        ok.query,
        "taskId=f-for-them&status=Success&taskType=sendfile&errorcode=0"
    );
    let entries = |p: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(p)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert!(entries(&target).is_empty(), "{:?}", entries(&target));
    assert_eq!(entries(&theirs), ["note"]);
    agent.expect_line("is a symbolic link owned by uid 1");
}

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn send_file_kick_writes_the_file_and_reports_success_or_invalid() {
    let dir = TestDir::new("sendfile");
    let server = Server::start();
    let dest = dir.path("files");
    let agent = start_remote(&dir, &server, &[]);
    expect_kick_channel(&agent, &server, 1);
    agent.expect_line("startup fetch done");
    let bad_sig = "0123456789abcdef0123456789abcdef";
    server.push(
        TASK_LIST,
        task_list(
            &[],
            &[],
            &[],
            &[
                file_entry("f-ok", "hello.txt", "file body\n", "0750", &dest, None),
                file_entry(
                    "f-badsig",
                    "bad.txt",
                    "tampered\n",
                    "0644",
                    &dest,
                    Some(bad_sig),
                ),
                file_entry("f-escape", "../escape.txt", "out\n", "0644", &dest, None),
            ],
        ),
    );
    server.push_kick("kick_vm file create f-ok");
    expect_kick_reply(&agent, &server, "accept:kick_vm file create f-ok");
    expect(&agent, &server, "kick fetch of f-ok", |r| {
        r.path == TASK_LIST && r.query.starts_with("reason=kickoff&taskId=f-ok&")
    });

    let ok = expect(&agent, &server, "finish of f-ok", |r| {
        about(r, FINISH, "f-ok")
    });
    assert_eq!(ok.method, "POST");
    assert_eq!(
        ok.query,
        "taskId=f-ok&status=Success&taskType=sendfile&errorcode=0"
    );
    let written = dest.join("hello.txt");
    assert_eq!(
        std::fs::read_to_string(&written).expect("read written file"),
        "file body\n"
    );
    assert_eq!(mode_of(&written), 0o750);

    let bad = expect(&agent, &server, "invalid f-badsig", |r| {
        about(r, INVALID, "f-badsig")
    });
    assert_eq!(
        bad.query,
        format!("taskId=f-badsig&taskType=sendfile&param=InvalidSignature&value={bad_sig}")
    );
    assert!(!dest.join("bad.txt").exists());

    // A name that leaves the destination is refused, and nothing is written outside it.
    let esc = expect(&agent, &server, "invalid f-escape", |r| {
        about(r, INVALID, "f-escape")
    });
    assert_eq!(
        esc.query,
        "taskId=f-escape&taskType=sendfile&param=FileNameInvalid&value=..%2Fescape.txt"
    );
    assert!(!dir.path("escape.txt").exists());
    // Only the one file, and no temp file left behind.
    let names: Vec<String> = std::fs::read_dir(&dest)
        .expect("list destination")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["hello.txt"]);
}

#[test]
fn strict_signatures_run_the_signed_task_and_refuse_the_others() {
    let dir = TestDir::new("signatures");
    let server = Server::start();
    let config = dir.path("config.json");
    std::fs::write(&config, r#"{"strict_signatures": true}"#).expect("write config");
    let signed_extra = format!(
        r#","taskSignature":"{}","userId":"{VECTOR_USER_ID}""#,
        rsa_task_signature()
    );
    // The test vector signs `userId # instanceId # commandContent` with the content as sent.
    let signed = shell_entry("t-signed", "echo hello\n", &signed_extra, "Once", OUTPUT);
    assert!(signed.contains(VECTOR_CONTENT), "{signed}");
    let unsigned = shell_entry("t-unsigned", "echo hello\n", "", "Once", OUTPUT);
    let tampered = shell_entry("t-tampered", "echo bye\n", &signed_extra, "Once", OUTPUT);
    // Send-file entries too: strict mode writes only one whose signature verifies.
    let dest = dir.path("files");
    let files = [
        file_entry_with(
            "f-signed",
            "hello",
            "echo hello\n",
            "0644",
            &dest,
            None,
            &signed_extra,
        ),
        file_entry("f-unsigned", "plain", "echo hello\n", "0644", &dest, None),
    ];
    server.push(
        TASK_LIST,
        task_list(&[signed, unsigned, tampered], &[], &[], &files),
    );
    let agent = start_remote(
        &dir,
        &server,
        &[
            "--instance-id",
            VECTOR_INSTANCE_ID,
            "--config",
            &config.display().to_string(),
        ],
    );

    let fin = expect(&agent, &server, "finish of t-signed", |r| {
        about(r, FINISH, "t-signed")
    });
    assert_eq!(fin.body_text(), "hello\n");
    let cert = expect(&agent, &server, "certificate download", |r| {
        r.path == SIGN_CERT
    });
    assert_eq!(cert.method, "GET");
    assert_eq!(cert.query, "signatureVersion=2&keypairVersion=1");
    assert!(dir.state().join("task_sign_certs").exists());

    let inv = expect(&agent, &server, "invalid t-unsigned", |r| {
        about(r, INVALID, "t-unsigned")
    });
    assert!(
        inv.query
            .starts_with("taskId=t-unsigned&invokeVersion=1&param=invalidSignature&value="),
        "{}",
        inv.query
    );
    let inv = expect(&agent, &server, "invalid t-tampered", |r| {
        about(r, INVALID, "t-tampered")
    });
    assert_eq!(
        inv.query,
        "taskId=t-tampered&invokeVersion=1&param=invalidSignature&value=Signature+verification+failed"
    );
    let fin = expect(&agent, &server, "finish of f-signed", |r| {
        about(r, FINISH, "f-signed")
    });
    assert!(fin.query.contains("&status=Success&"), "{}", fin.query);
    let inv = expect(&agent, &server, "invalid f-unsigned", |r| {
        about(r, INVALID, "f-unsigned")
    });
    assert!(
        inv.query.contains("&param=InvalidSignature&"),
        "{}",
        inv.query
    );
    assert!(dest.join("hello").exists());
    assert!(!dest.join("plain").exists());
    // One download: the second signed task used the cached certificate.
    let downloads = server
        .requests()
        .iter()
        .filter(|r| r.path == SIGN_CERT)
        .count();
    assert_eq!(downloads, 1);
    let ran: Vec<String> = server
        .requests()
        .iter()
        .filter(|r| r.path != INVALID)
        .filter(|r| matches!(r.param("taskId"), Some(id) if id != "t-signed" && id != "f-signed"))
        .map(|r| r.target())
        .collect();
    assert!(ran.is_empty(), "refused tasks reported as run: {ran:#?}");
}

/// `signature_pinned_keys`: a certificate with another key is refused in strict mode, whatever
/// the server (or whoever answers for it) sends; an entry that is no key stops the start.
#[test]
fn pinned_keys_refuse_a_certificate_with_another_key() {
    let dir = TestDir::new("pinned");
    let server = Server::start();
    let keyfile = dir.path("pinned.pem");
    std::fs::write(
        &keyfile,
        include_str!("../src/remote/testdata/sign_sm2_pub.pem"),
    )
    .expect("write key");
    let config = dir.path("config.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"strict_signatures": true, "signature_pinned_keys": ["{}"]}}"#,
            keyfile.display()
        ),
    )
    .expect("write config");
    let signed_extra = format!(
        r#","taskSignature":"{}","userId":"{VECTOR_USER_ID}""#,
        rsa_task_signature()
    );
    let signed = shell_entry("t-signed", "echo hello\n", &signed_extra, "Once", OUTPUT);
    server.push(TASK_LIST, task_list(&[signed], &[], &[], &[]));
    let config_arg = config.display().to_string();
    let agent = start_remote(
        &dir,
        &server,
        &["--instance-id", VECTOR_INSTANCE_ID, "--config", &config_arg],
    );
    let inv = expect(&agent, &server, "invalid t-signed", |r| {
        about(r, INVALID, "t-signed")
    });
    assert!(
        inv.query.ends_with(
            "&param=invalidSignature&value=certificate+key+is+not+one+of+signature_pinned_keys"
        ),
        "{}",
        inv.query
    );
    drop(agent);

    std::fs::write(&config, r#"{"signature_pinned_keys": ["not a key"]}"#).expect("config");
    let mut agent = start_remote(&dir, &server, &["--config", &config_arg]);
    assert_eq!(support::wait_exit(&mut agent).code(), Some(2));
    agent.expect_line("signature_pinned_keys cannot be used: entry 1 is neither a PEM public key nor an absolute path");
}

/// What a registration left in `<state>/hybrid` that the headers are checked against.
struct Registered {
    public_pem: String,
    machine_id: String,
}

/// Checks the four `x-acs-*` headers of a hybrid request against the registered key.
fn check_hybrid_headers(r: &Request, reg: &Registered) {
    let header = |name: &str| {
        r.header(name)
            .unwrap_or_else(|| panic!("{} {} has no {name}: {:?}", r.method, r.path, r.headers))
            .to_string()
    };
    let instance = header("x-acs-instance-id");
    assert_eq!(instance, REGISTERED_ID);
    let ts = header("x-acs-timestamp");
    assert!(
        ts.len() >= 13 && ts.bytes().all(|b| b.is_ascii_digit()),
        "{ts}"
    );
    let request_id = header("x-acs-request-id");
    assert_eq!(request_id.len(), 36, "{request_id}");
    let sig = decode_base64(header("x-acs-signature").as_bytes()).expect("base64 signature");
    let key = RsaPublicKey::from_public_key_pem(reg.public_pem.trim()).expect("pub-key PEM");
    let digest = Md5::digest(format!("{instance}{}{ts}{request_id}", reg.machine_id).as_bytes());
    key.verify(Pkcs1v15Sign::new::<Md5>(), &digest, &sig)
        .unwrap_or_else(|e| panic!("x-acs-signature of {} does not verify: {e}", r.path));
}

const HYBRID_FILES: [&str; 6] = [
    "instance-id",
    "pri-key",
    "pub-key",
    "region-id",
    "machine-id",
    "network-mode",
];

#[test]
fn register_then_agent_signs_its_requests_then_deregister_removes_the_keys() {
    let dir = TestDir::new("hybrid");
    let server = Server::start();
    let state = dir.state().display().to_string();
    let hybrid = dir.state().join("hybrid");
    let secret = "activation-secret-42";
    // No server anywhere: refused with a line that names the three places.
    let empty = dir.path("empty-config.json");
    std::fs::write(&empty, "{}").expect("config");
    let none = Command::new(bin())
        .args([
            "register",
            "--activation-id",
            "act-1",
            "--state-dir",
            &state,
            "--config",
        ])
        .arg(&empty)
        .env("ASSISTD_ACTIVATION_CODE", secret)
        .env_remove("ALIYUN_ASSIST_SERVER_HOST")
        .env_remove("ALIYUN_ASSIST_PROXY")
        .output()
        .expect("run assistd register");
    assert_eq!(none.status.code(), Some(2));
    let why = String::from_utf8_lossy(&none.stderr);
    assert!(why.contains("ALIYUN_ASSIST_SERVER_HOST"), "{why}");
    assert!(!hybrid.exists());
    // `server_host`: `--server` when given, else the environment, as for `agent`.
    let register = |server_flag: Option<&str>, server_host: &str| {
        let mut cmd = Command::new(bin());
        cmd.arg("register");
        if let Some(url) = server_flag {
            cmd.args(["--server", url]);
        }
        cmd.args(["--activation-id", "act-1", "--region", "cn-test"])
            .args(["--state-dir", &state])
            .env("ASSISTD_ACTIVATION_CODE", secret)
            .env("ALIYUN_ASSIST_SERVER_HOST", server_host)
            .env_remove("ALIYUN_ASSIST_PROXY")
            .output()
            .expect("run assistd register")
    };
    // The server from ALIYUN_ASSIST_SERVER_HOST alone.
    let out = register(None, &server.url());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("registered as {REGISTERED_ID}")),
        "{stdout}"
    );
    assert!(
        !stdout.contains(secret) && !stderr.contains(secret),
        "the activation code was printed"
    );

    let reg = server
        .requests()
        .into_iter()
        .find(|r| r.path == REGISTER)
        .expect("register request");
    assert_eq!(reg.method, "POST");
    let body: serde_json::Value = serde_json::from_slice(&reg.body).expect("register body JSON");
    assert_eq!(body["activationCode"], secret);
    assert_eq!(body["activationId"], "act-1");
    assert_eq!(body["regionId"], "cn-test");
    assert_eq!(body["osType"], "linux");
    let read = |name: &str| std::fs::read_to_string(hybrid.join(name)).expect(name);
    let keys = Registered {
        public_pem: read("pub-key"),
        machine_id: read("machine-id").trim().to_string(),
    };
    assert_eq!(body["publicKey"], base64(keys.public_pem.as_bytes()));
    assert_eq!(body["machineId"], keys.machine_id);
    for name in HYBRID_FILES {
        assert_eq!(mode_of(&hybrid.join(name)), 0o600, "{name}");
    }
    assert_eq!(
        std::fs::read_to_string(hybrid.join("instance-id")).expect("instance-id"),
        REGISTERED_ID
    );
    // A second registration is refused and keeps the keys.
    // (--server wins over the environment, which names a closed port here.)
    let again = register(Some(&server.url()), "http://127.0.0.1:1");
    let why = String::from_utf8_lossy(&again.stderr);
    assert!(why.contains("already registered"), "{why}");
    assert_eq!(again.status.code(), Some(2));
    assert!(hybrid.join("pri-key").exists());

    // The agent, with no instance id of its own, is the registered instance and signs every
    // request, the kick channel's upgrade included.
    let args: Vec<String> = remote_args(&dir, &server)
        .into_iter()
        .scan(false, |skip, a| {
            let keep = !*skip && a != "--instance-id";
            *skip = a == "--instance-id";
            Some(keep.then_some(a))
        })
        .flatten()
        .collect();
    assert!(!args.iter().any(|a| a == "i-test"), "{args:?}");
    let mut agent = spawn_remote(args, &[]);
    let list = expect(&agent, &server, "startup fetch", |r| r.path == TASK_LIST);
    check_hybrid_headers(&list, &keys);
    assert_eq!(list.header("X-Client-Instance-ID"), Some(REGISTERED_ID));
    let upgrade = expect(&agent, &server, "kick upgrade", |r| r.path == NOTIFY);
    check_hybrid_headers(&upgrade, &keys);
    let status = agent.stop();
    assert_eq!(status.code(), Some(0));

    // The server from the config's `server`, which wins over the environment's closed port.
    let config = dir.path("config.json");
    std::fs::write(&config, format!(r#"{{"server": "{}"}}"#, server.url())).expect("config");
    let out = Command::new(bin())
        .args(["deregister", "--state-dir", &state, "--config"])
        .arg(&config)
        .env("ALIYUN_ASSIST_SERVER_HOST", "http://127.0.0.1:1")
        .env_remove("ALIYUN_ASSIST_PROXY")
        .output()
        .expect("run assistd deregister");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dereg = server
        .requests()
        .into_iter()
        .find(|r| r.path == DEREGISTER)
        .expect("deregister request");
    assert_eq!(dereg.method, "POST");
    check_hybrid_headers(&dereg, &keys);
    for name in [
        "instance-id",
        "pri-key",
        "pub-key",
        "region-id",
        "machine-id",
    ] {
        assert!(!hybrid.join(name).exists(), "{name} is still there");
    }
    // The reference keeps network-mode.
    assert!(hybrid.join("network-mode").exists());
}
