//! The sandbox's escape and abuse suite (issue: runtime sandbox), run against the real
//! `ringfence sandbox run` as root. The workload is `crates/test-util/progs/probe.c`, built static by
//! each test; each attack is a named test asserting the refusal and what the user sees.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code: a panic is a failure report

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Rootfs {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

fn require_root() {
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1);
    assert_eq!(
        uid, 0,
        "the sandbox suite needs root (namespaces, uid maps, cgroups); CI runs it as root"
    );
}

/// A rootfs with the static probe at /bin/probe (and, on request, a setuid-root copy).
fn rootfs() -> Rootfs {
    require_root();
    let dir = tempfile::Builder::new()
        .prefix("ringfence-sandbox-test")
        .tempdir()
        .unwrap_or_else(|e| panic!("tempdir: {e}"));
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod: {e}"));
    let root = dir.path().join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap_or_else(|e| panic!("mkdir: {e}"));
    ringfence_test_util::probe::build(&root.join("bin/probe")).unwrap_or_else(|e| panic!("{e:#}"));
    Rootfs { _dir: dir, root }
}

fn ringfence() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ringfence"))
}

fn run_in(root: &Path, extra: &[&str], cmd: &[&str]) -> Output {
    let mut c = ringfence();
    c.args(["sandbox", "run", "--rootfs"]).arg(root);
    c.args(extra).arg("--").args(cmd);
    c.output()
        .unwrap_or_else(|e| panic!("running ringfence: {e}"))
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Runs a probe attack and asserts every attempt was refused (and the probe says so).
fn assert_all_refused(o: &Output, expect: &[&str]) {
    let (out, err) = text(o);
    assert!(
        !out.contains("ESCAPED"),
        "escape!\nstdout:\n{out}\nstderr:\n{err}"
    );
    assert_eq!(o.status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    for line in expect {
        assert!(
            out.contains(line),
            "missing {line:?} in:\n{out}\nstderr:\n{err}"
        );
    }
}

#[test]
fn a_compliant_command_runs_as_pid_1_without_capabilities() {
    let r = rootfs();
    let o = run_in(&r.root, &[], &["/bin/probe", "hello"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(out, "hello from pid 1\n");
    let o = run_in(&r.root, &[], &["probe", "ids"]);
    let (out, _) = text(&o);
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("CapPrm:\t0000000000000000"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
}

#[test]
fn the_task_starts_with_default_signal_dispositions_and_nothing_blocked() {
    // The Rust runtime ignores SIGPIPE in the binaries that start the task; an ignored signal
    // survives exec, so without a reset `yes | head` inside would never end by SIGPIPE.
    let r = rootfs();
    let o = run_in(&r.root, &[], &["probe", "ids"]);
    let (out, err) = text(&o);
    assert!(out.contains("SigIgn:\t0000000000000000"), "{out}{err}");
    assert!(out.contains("SigBlk:\t0000000000000000"), "{out}{err}");
}

#[test]
fn writing_outside_the_rootfs_is_refused() {
    let r = rootfs();
    let o = run_in(&r.root, &[], &["/bin/probe", "write-outside"]);
    assert_all_refused(
        &o,
        &[
            "refused: create /escape EROFS",
            "refused: create /../../escape EROFS",
            "refused: write /bin/probe EACCES",
            "refused: create via /proc/1/root EROFS",
            "tmp writable: yes",
        ],
    );
    assert!(!r.root.join("escape").exists());
    assert!(
        !r.root
            .parent()
            .map(|p| p.join("escape").exists())
            .unwrap_or(true)
    );
}

#[test]
fn the_hosts_etc_shadow_cannot_be_read() {
    let r = rootfs();
    let o = run_in(&r.root, &[], &["/bin/probe", "read-shadow"]);
    assert_all_refused(
        &o,
        &[
            "refused: open /etc/shadow ENOENT",
            "refused: open /../../etc/shadow ENOENT",
            "refused: open /proc/1/root/etc/shadow ENOENT",
        ],
    );
}

#[test]
fn ptrace_of_a_host_process_is_refused() {
    let r = rootfs();
    let me = std::process::id().to_string();
    let o = run_in(&r.root, &[], &["/bin/probe", "ptrace", &me]);
    assert_all_refused(
        &o,
        &[
            "refused: ptrace attach host pid EPERM",
            "refused: ptrace seize host pid EPERM",
            "refused: kill host pid ESRCH",
        ],
    );
}

#[test]
fn mount_is_refused() {
    let r = rootfs();
    let o = run_in(&r.root, &[], &["/bin/probe", "mount"]);
    assert_all_refused(
        &o,
        &[
            "refused: mount tmpfs EPERM",
            "refused: remount / rw EPERM",
            "refused: umount /proc EPERM",
        ],
    );
}

#[test]
fn loading_a_kernel_module_is_refused() {
    let r = rootfs();
    let o = run_in(&r.root, &[], &["/bin/probe", "module"]);
    assert_all_refused(
        &o,
        &["refused: init_module EPERM", "refused: finit_module EPERM"],
    );
}

#[test]
fn a_raw_socket_is_refused() {
    let r = rootfs();
    let o = run_in(&r.root, &[], &["/bin/probe", "raw-socket"]);
    assert_all_refused(
        &o,
        &[
            "refused: socket AF_INET SOCK_RAW EPERM",
            "refused: socket AF_PACKET EPERM",
            "refused: socket AF_VSOCK EPERM",
            "refused: prctl(PR_SET_PDEATHSIG, 0) EPERM",
        ],
    );
}

/// runc CVE-2024-21626 class: a host directory descriptor leaked into the container lets
/// `/proc/self/fd/N/..` walk the host. The sandbox closes every inherited descriptor.
#[test]
fn a_leaked_host_descriptor_is_closed_before_the_task_runs() {
    let r = rootfs();
    // A careless parent: the shell opens the host's /etc as fd 7, without close-on-exec,
    // and execs ringfence with it.
    let mut c = Command::new("sh");
    c.args(["-c", "exec 7</etc && exec \"$0\" \"$@\""]);
    c.arg(env!("CARGO_BIN_EXE_ringfence"));
    c.args(["sandbox", "run", "--rootfs"]).arg(&r.root);
    c.args(["--", "/bin/probe", "leaked-fd"]);
    let o = c.output().unwrap_or_else(|e| panic!("{e}"));
    assert_all_refused(
        &o,
        &[
            "refused: open /proc/self/fd/7/etc/shadow ENOENT",
            "refused: no inherited descriptor above 2",
        ],
    );
}

#[test]
fn exec_of_a_binary_written_at_run_time_is_refused_and_reported() {
    let r = rootfs();
    let o = run_in(&r.root, &[], &["/bin/probe", "exec-written"]);
    assert_all_refused(&o, &["refused: execve /tmp/dropped EACCES"]);
    let (_, err) = text(&o);
    assert!(
        err.contains(
            "ringfence sandbox: drift: refused exec of /tmp/dropped: not on the image's root \
             (written or brought in at run time)"
        ),
        "{err}"
    );
}

#[test]
fn exec_through_memfd_and_execveat_is_refused_and_reported() {
    let r = rootfs();
    // No profile lets a memfd be made: the only executable files are then the image's.
    for profile in ["default", "strict"] {
        let o = run_in(
            &r.root,
            &["--profile", profile],
            &["/bin/probe", "memfd-exec"],
        );
        assert_all_refused(
            &o,
            &[
                "refused: memfd_create EPERM",
                "refused: execveat fd of /tmp/fdcopy AT_EMPTY_PATH EACCES",
                "refused: execve /proc/self/fd/N of /tmp/fdcopy EACCES",
            ],
        );
        let (_, err) = text(&o);
        assert!(
            err.contains("drift: refused exec of fd 3 (/tmp/fdcopy): not on the image's root"),
            "{err}"
        );
    }
}

#[test]
fn a_syscall_through_the_ia32_abi_kills_the_task() {
    let r = rootfs();
    let o = run_in(&r.root, &[], &["/bin/probe", "int80"]);
    let (out, err) = text(&o);
    assert!(!out.contains("ESCAPED"), "{out}");
    assert_eq!(o.status.code(), Some(128 + 31), "{err}");
    assert!(
        err.contains(
            "ringfence sandbox: killed by the syscall filter (SIGSYS): a call from another ABI (ia32 int 0x80 or x32)"
        ),
        "{err}"
    );
}

/// How many children the fork bomb made before fork failed with EAGAIN, and the stderr.
fn forks_before_refusal(o: &Output) -> (u32, String) {
    let (out, err) = text(o);
    let n = out
        .trim()
        .strip_prefix("refused: fork EAGAIN after ")
        .and_then(|rest| rest.strip_suffix(" children"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no refused fork in:\n{out}\n{err}"));
    (n, err)
}

#[test]
fn a_fork_bomb_is_stopped_by_the_pids_limit() {
    let r = rootfs();
    let o = run_in(&r.root, &["--pids", "16"], &["/bin/probe", "fork-bomb"]);
    let (n, err) = forks_before_refusal(&o);
    assert!(n < 16, "{n} children under a limit of 16");
    assert!(
        err.contains("ringfence sandbox: the pids limit refused"),
        "{err}"
    );
}

#[test]
fn a_memory_bomb_is_oom_killed_and_reported() {
    let r = rootfs();
    let report = r
        .root
        .parent()
        .map(|p| p.join("report.json"))
        .unwrap_or_default();
    let o = run_in(
        &r.root,
        &["--memory", "32M", "--report", &report.to_string_lossy()],
        &["/bin/probe", "mem-bomb"],
    );
    let (out, err) = text(&o);
    assert!(!out.contains("ESCAPED"), "{out}");
    assert_eq!(o.status.code(), Some(137), "{out}\n{err}");
    assert!(
        err.contains(
            "ringfence sandbox: killed: out of memory (the sandbox's memory limit was reached)"
        ),
        "{err}"
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap_or_default())
        .unwrap_or_else(|e| panic!("report: {e}"));
    assert_eq!(v["oom_killed"], true);
    assert!(
        v["memory_peak"].as_u64().unwrap_or(u64::MAX) <= 32 << 20,
        "{v}"
    );
}

#[test]
fn a_setuid_binary_inside_the_image_gains_nothing() {
    let r = rootfs();
    let suid = r.root.join("bin/suid");
    std::fs::copy(r.root.join("bin/probe"), &suid).unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755))
        .unwrap_or_else(|e| panic!("{e}"));
    let o = run_in(&r.root, &[], &["/bin/suid", "ids"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    assert!(out.contains("CapPrm:\t0000000000000000"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    // The task's root is the unprivileged host uid given, never the host's root.
    let o = run_in(&r.root, &["--host-uid", "0"], &["/bin/suid", "ids"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        err.contains("the task's root must map to an unprivileged host uid and gid, not 0"),
        "{err}"
    );
}

#[test]
fn the_strict_profile_refuses_bpf_keyctl_userfaultfd_perf_and_nested_user_namespaces() {
    let r = rootfs();
    for profile in ["strict", "default"] {
        let o = run_in(
            &r.root,
            &["--profile", profile],
            &["/bin/probe", "strict-calls"],
        );
        assert_all_refused(
            &o,
            &[
                "refused: bpf EPERM",
                "refused: keyctl EPERM",
                "refused: userfaultfd EPERM",
                "refused: perf_event_open EPERM",
                "refused: unshare(CLONE_NEWUSER) EPERM",
                "refused: clone(CLONE_NEWUSER) EPERM",
            ],
        );
    }
}

#[test]
fn a_command_missing_from_the_image_exits_127_with_the_reason() {
    let r = rootfs();
    let o = run_in(&r.root, &[], &["nosuchtool"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(127), "{err}");
    assert!(
        err.contains("error: sandbox setup failed: exec nosuchtool: not found in"),
        "{err}"
    );
}

#[test]
fn an_oci_image_is_verified_unpacked_and_run_and_a_tampered_one_refused() {
    let r = rootfs();
    let probe = std::fs::read(r.root.join("bin/probe")).unwrap_or_default();
    let layout = r.root.parent().map(|p| p.join("image")).unwrap_or_default();
    let layer = ringfence_provenance_tar(&[("bin/probe", 0o755, &probe)]);
    write_layout(&layout, &layer);
    let work = r.root.parent().map(|p| p.join("work")).unwrap_or_default();
    let run = |extra: &[&str]| {
        let mut c = ringfence();
        c.args(["sandbox", "run", "--image"]).arg(&layout);
        c.arg("--work-dir").arg(&work).args(extra);
        c.args(["--", "/bin/probe", "hello"]);
        c.output().unwrap_or_else(|e| panic!("{e}"))
    };
    let o = run(&[]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(out, "hello from pid 1\n");
    // The unpacked root is removed afterwards.
    assert_eq!(std::fs::read_dir(&work).map(|d| d.count()).unwrap_or(0), 0);

    // One flipped byte in the layer: refused before anything runs.
    let blob = std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap_or_else(|e| panic!("{e}"))
        .flatten()
        .map(|e| e.path())
        .find(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0) > 10_000)
        .unwrap_or_else(|| panic!("no layer blob"));
    let mut bytes = std::fs::read(&blob).unwrap_or_default();
    if let Some(b) = bytes.get_mut(5000) {
        *b ^= 0xff;
    }
    std::fs::write(&blob, bytes).unwrap_or_else(|e| panic!("{e}"));
    let o = run(&[]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(125), "{out}{err}");
    assert!(
        err.contains("does not match: content hashes to sha256:"),
        "{err}"
    );
    assert!(out.is_empty());
}

fn ringfence_provenance_tar(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    ringfence_provenance::oci::tar(files)
}

fn write_layout(dir: &Path, layer: &[u8]) {
    ringfence_provenance::oci::write_layout(
        dir,
        &serde_json::json!({"architecture": "amd64", "os": "linux"}),
        &[layer.to_vec()],
        "probe:test",
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn profile_show_lists_what_is_allowed_supervised_and_refused() {
    let o = ringfence()
        .args(["sandbox", "profile", "show", "--profile", "strict"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let (out, _) = text(&o);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        out.starts_with("profile strict: compute and files only"),
        "{out}"
    );
    assert!(out.contains("architecture: x86-64 only (ia32 and x32 calls kill the process)"));
    assert!(
        out.contains("execve") && out.contains("supervised (exec must be in the verified image)")
    );
    assert!(!out.contains(" socket "), "strict lists socket:\n{out}");
    let o = ringfence()
        .args(["sandbox", "profile", "show", "--json"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    assert_eq!(v["profile"], "default");
    assert!(v["rules"].as_array().map(|a| a.len()).unwrap_or(0) > 150);
}

use ringfence_test_util::probe::processes_with;

#[test]
fn interrupting_sandbox_run_stops_everything_inside() {
    let r = rootfs();
    let marker = format!("marker-{}", std::process::id());
    let mut child = ringfence()
        .args(["sandbox", "run", "--rootfs"])
        .arg(&r.root)
        .args(["--", "/bin/probe", "sleep", "60", &marker])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while processes_with(&marker).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the task never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Ctrl-C, by PID.
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = child.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let left = processes_with(&marker);
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running after Ctrl-C: {left:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_cpu_limit_slows_a_compute_loop() {
    let r = rootfs();
    let time = |extra: &[&str]| {
        let t = std::time::Instant::now();
        let o = run_in(&r.root, extra, &["/bin/probe", "compute", "100000000"]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
        t.elapsed()
    };
    let free = time(&[]);
    let limited = time(&["--cpu", "0.1"]);
    assert!(
        limited > free * 3,
        "--cpu 0.1 took {limited:?}, unlimited {free:?}"
    );
}

#[test]
fn the_environment_is_only_what_was_given_and_the_host_name_is_the_sandboxs() {
    let r = rootfs();
    std::fs::copy("/bin/busybox", r.root.join("bin/busybox")).expect("busybox (busybox-static)");
    std::os::unix::fs::symlink("busybox", r.root.join("bin/sh")).unwrap();
    let o = ringfence()
        .env("HOST_SECRET", "leaked")
        .args(["sandbox", "run", "--rootfs"])
        .arg(&r.root)
        .args(["--env", "GREETING=hi", "--hostname", "job-7", "--"])
        .args([
            "/bin/sh",
            "-c",
            "echo \"$GREETING ${HOST_SECRET:-absent} $(hostname)\"",
        ])
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(out, "hi absent job-7\n");
    let o = run_in(&r.root, &["--env", "NOEQUALS"], &["/bin/probe", "hello"]);
    let (_, err) = text(&o);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        err.contains("--env \"NOEQUALS\": expected NAME=VALUE"),
        "{err}"
    );
}

#[test]
fn without_a_veth_there_is_loopback_and_no_way_to_the_host() {
    let r = rootfs();
    let o = run_in(&r.root, &[], &["/bin/probe", "loopback"]);
    let (out, err) = text(&o);
    assert_eq!(out, "loopback works\n", "{err}");
    // A listener on the host's loopback is not the sandbox's loopback.
    let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = host.local_addr().unwrap().port().to_string();
    let o = run_in(&r.root, &[], &["/bin/probe", "connect", "127.0.0.1", &port]);
    assert_eq!(text(&o).0, "connect failed: ECONNREFUSED\n");
    let o = run_in(
        &r.root,
        &[],
        &["/bin/probe", "connect", "10.203.0.1", &port],
    );
    assert_eq!(text(&o).0, "connect failed: ENETUNREACH\n");
}

#[test]
fn a_veth_sandbox_reaches_the_host_end_of_its_link() {
    let r = rootfs();
    // A subnet of its own per test process, so parallel runs never share one.
    let n = std::process::id() % 16_000;
    let (b, c) = (n / 64, (n % 64) * 4);
    let task = format!("10.{}.{}.{}", 204 + b / 256, b % 256, c + 2);
    let gateway = format!("10.{}.{}.{}", 204 + b / 256, b % 256, c + 1);
    let host = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = host.local_addr().unwrap().port().to_string();
    let reader = std::thread::spawn(move || {
        let (mut s, peer) = host.accept().unwrap();
        let mut line = String::new();
        std::io::Read::read_to_string(&mut s, &mut line).unwrap();
        (peer.ip().to_string(), line)
    });
    let net = format!("veth:{task}/30");
    let o = run_in(
        &r.root,
        &["--net", &net],
        &["/bin/probe", "connect", &gateway, &port],
    );
    let (out, err) = text(&o);
    assert_eq!(out, "connected\n", "{err}");
    let (peer, line) = reader.join().unwrap();
    assert_eq!(peer, task);
    assert_eq!(line, "hello from the sandbox\n");
    // The host end goes away with the sandbox, before `sandbox run` returns.
    let links = Command::new("ip").args(["-o", "addr"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.contains(&format!("inet {gateway}/30 ")), "{links}");

    let o = run_in(
        &r.root,
        &["--net", "veth:10.1.1.0/30"],
        &["/bin/probe", "hello"],
    );
    let (_, err) = text(&o);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        err.contains("the address is the subnet's network or broadcast address"),
        "{err}"
    );
}

/// A /30 of its own per test process and `salt`, so parallel runs never share one; returns
/// (the task's address, the host end's).
fn veth_pair_addrs(salt: u32) -> (String, String) {
    let n = (std::process::id().wrapping_mul(7).wrapping_add(salt * 4099)) % 16_000;
    let (b, c) = (n / 64, (n % 64) * 4);
    let third = 204 + b / 256 + 1;
    (
        format!("10.{third}.{}.{}", b % 256, c + 2),
        format!("10.{third}.{}.{}", b % 256, c + 1),
    )
}

/// Accepts on `l` until the returned flag is set, collecting what each connection sent.
fn accept_all(
    l: std::net::TcpListener,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<Vec<String>>,
) {
    use std::sync::atomic::Ordering;
    l.set_nonblocking(true).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = std::sync::Arc::clone(&stop);
    let handle = std::thread::spawn(move || {
        let mut got = Vec::new();
        // Bounded even if the test never sets the flag.
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            match l.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    let mut line = String::new();
                    let _ = std::io::Read::read_to_string(&mut s, &mut line);
                    got.push(line);
                }
                Err(_) if flag.load(Ordering::Relaxed) || Instant::now() > end => return got,
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    });
    (stop, handle)
}

/// Stops an `accept_all` once the connections already made are taken (the backlog is drained
/// before the flag is looked at).
fn accepted(
    (stop, handle): (
        std::sync::Arc<std::sync::atomic::AtomicBool>,
        std::thread::JoinHandle<Vec<String>>,
    ),
) -> Vec<String> {
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    handle.join().unwrap()
}

#[test]
fn an_egress_allow_list_lets_through_only_what_it_names_and_reports_the_rest() {
    let r = rootfs();
    let (task, gateway) = veth_pair_addrs(1);
    let good = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let bad = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let (gp, bp) = (
        good.local_addr().unwrap().port().to_string(),
        bad.local_addr().unwrap().port().to_string(),
    );
    let good = accept_all(good);
    let bad = accept_all(bad);
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let net = format!("veth:{task}/30");
    let allow = format!("{gateway}:{gp}");
    let o = run_in(
        &r.root,
        &[
            "--net",
            &net,
            "--allow-connect",
            &allow,
            "--report",
            report.to_str().unwrap(),
        ],
        &["/bin/probe", "egress", &gateway, &gp, &bp],
    );
    assert_all_refused(
        &o,
        &[
            "allowed port: connected",
            "refused: connect to the other port EACCES",
            "refused: connect to the other port as ::ffff:IP EACCES",
            "refused: non-blocking connect to the other port EACCES",
            "refused: udp socket EPERM",
            "refused: udp6 socket EPERM",
            "refused: sctp socket EPERM",
            "refused: mptcp socket EPERM",
            "refused: raw socket EPERM",
            "refused: sendto MSG_FASTOPEN EPERM",
            "refused: sendmsg MSG_FASTOPEN EPERM",
            "refused: connect with a 512-byte address EINVAL",
            "refused: setsockopt TCP_ULP smc EPERM",
            "refused: setsockopt SO_BINDTODEVICE eth0 EPERM",
            "refused: setsockopt IP_OPTIONS source route EPERM",
            "refused: descriptor race (300 tries)",
        ],
    );
    let (out, err) = text(&o);
    // The port race: some connects went through, every one of them to the allowed port.
    let race = out
        .lines()
        .find(|l| l.starts_with("port race: "))
        .unwrap_or_else(|| panic!("{out}"));
    let connected: usize = race
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(connected > 0, "{race}");
    // The operator sees each refusal, with the destination and the reason.
    let refusal = format!(
        "ringfence sandbox: egress: refused connect to {gateway}:{bp}: not in the sandbox's egress allow-list"
    );
    assert!(err.contains(&refusal), "{err}");
    let good = accepted(good);
    let bad = accepted(bad);
    assert!(bad.is_empty(), "the refused port was reached: {bad:?}");
    assert_eq!(good.first().map(String::as_str), Some("good\n"), "{good:?}");
    assert_eq!(good.len(), 1 + connected, "{good:?}");
    // The report lists the refusals too.
    let report: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let refused = report["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "connect_refused")
        .count();
    assert!(refused >= 3, "{report}");
}

#[test]
fn without_an_allow_list_entry_nothing_but_loopback_is_reachable() {
    let r = rootfs();
    let (task, gateway) = veth_pair_addrs(2);
    let host = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = host.local_addr().unwrap().port().to_string();
    let host = accept_all(host);
    let net = format!("veth:{task}/30");
    let args = ["--net", net.as_str(), "--allow-connect", "none"];
    let o = run_in(&r.root, &args, &["/bin/probe", "connect", &gateway, &port]);
    let (out, err) = text(&o);
    assert_eq!(out, "connect failed: EACCES\n", "{err}");
    assert!(
        err.contains(&format!(
            "egress: refused connect to {gateway}:{port}: the sandbox allows no egress (only loopback)"
        )),
        "{err}"
    );
    // The task's own loopback is not egress.
    let o = run_in(&r.root, &args, &["/bin/probe", "loopback"]);
    assert_eq!(text(&o).0, "loopback works\n", "{}", text(&o).1);
    assert!(accepted(host).is_empty());
}

#[test]
fn an_allow_list_that_cannot_be_enforced_stops_the_start() {
    let r = rootfs();
    let o = run_in(
        &r.root,
        &["--profile", "strict", "--allow-connect", "10.0.0.1:443"],
        &["/bin/probe", "hello"],
    );
    let (out, err) = text(&o);
    assert_ne!(o.status.code(), Some(0));
    assert_eq!(out, "");
    assert!(
        err.contains("cannot enforce the egress allow-list: the strict profile has no sockets"),
        "{err}"
    );
    for (spec, why) in [
        (
            "db.internal:5432",
            "not an IP address (names are not resolved here)",
        ),
        (
            "10.0.0.1/24:443",
            "the address has bits set beyond its prefix length",
        ),
        (
            "10.0.0.1",
            "expected ADDR[/PREFIX]:PORT, with * for any port",
        ),
    ] {
        let o = run_in(
            &r.root,
            &["--allow-connect", spec],
            &["/bin/probe", "hello"],
        );
        let (out, err) = text(&o);
        assert_ne!(o.status.code(), Some(0));
        assert_eq!(out, "");
        assert!(
            err.contains(&format!("--allow-connect {spec:?}: {why}")),
            "{err}"
        );
    }
}

/// bubblewrap CVE-2017-5226 class: a sandboxed program pushing input into the terminal it was
/// started from. The task runs in a session of its own, without a controlling terminal.
#[test]
fn the_task_cannot_push_input_into_the_callers_terminal() {
    let r = rootfs();
    let cmd = format!(
        "{} sandbox run --rootfs {} -- /bin/probe tiocsti",
        env!("CARGO_BIN_EXE_ringfence"),
        r.root.display()
    );
    // `script` gives the command a pseudo-terminal as its controlling terminal.
    let o = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .expect("script (bsdutils)");
    let out = String::from_utf8_lossy(&o.stdout).replace('\r', "");
    assert!(out.contains("stdin is a tty: yes"), "{out}");
    assert!(out.contains("refused: TIOCSTI on stdin EPERM"), "{out}");
    assert!(
        out.contains("refused: TIOCSTI on /dev/tty")
            || out.contains("refused: open /dev/tty ENXIO"),
        "{out}"
    );
    assert!(!out.contains("ESCAPED"), "{out}");
}

#[test]
fn a_volume_is_writable_but_never_executable_and_ro_means_read_only() {
    let r = rootfs();
    let data = r.root.parent().unwrap().join("data");
    std::fs::create_dir(&data).unwrap();
    // The task's root is host uid 100000: give it the directory, as the agent will.
    let chown = Command::new("chown")
        .args(["100000:100000"])
        .arg(&data)
        .status()
        .unwrap();
    assert!(chown.success());
    let vol = format!("{}:/data", data.display());
    let o = run_in(
        &r.root,
        &["--volume", &vol],
        &["/bin/probe", "write-file", "/data/out"],
    );
    assert_eq!(text(&o).0, "written\n", "{}", text(&o).1);
    assert_eq!(
        std::fs::read_to_string(data.join("out")).unwrap(),
        "written inside\n"
    );

    let o = run_in(
        &r.root,
        &["--volume", &vol],
        &["/bin/probe", "copy-and-exec", "/data/p"],
    );
    assert_all_refused(&o, &["refused: execve of a copy on the volume EACCES"]);
    assert!(
        text(&o)
            .1
            .contains("drift: refused exec of /data/p: not on the image's root"),
        "{}",
        text(&o).1
    );

    let ro = format!("{}:/data:ro", data.display());
    let o = run_in(
        &r.root,
        &["--volume", &ro],
        &["/bin/probe", "write-file", "/data/again"],
    );
    assert_eq!(text(&o).0, "write failed: EROFS\n");

    // A volume inside the rootfs (or holding it) is refused: the same file would be
    // executable through / and writable through the volume.
    let inner = format!("{}:/data", r.root.join("bin").display());
    let o = run_in(&r.root, &["--volume", &inner], &["/bin/probe", "hello"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(text(&o).1.contains("overlaps the rootfs"), "{}", text(&o).1);

    // A rootfs whose mount point is a symlink out of it is refused.
    std::os::unix::fs::symlink("/etc", r.root.join("etcdata")).unwrap();
    let bad = format!("{}:/etcdata", data.display());
    let o = run_in(&r.root, &["--volume", &bad], &["/bin/probe", "hello"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        text(&o).1.contains("cannot be a volume's mount point"),
        "{}",
        text(&o).1
    );
}

/// Paths that once made the exec supervisor (host root) resolve from the host's root, block on
/// a FIFO or read /proc: refused, promptly, with nothing opened outside the sandbox.
#[test]
fn exec_paths_aimed_at_the_supervisor_are_refused_promptly() {
    let r = rootfs();
    // A FIFO in the image (the sandbox cannot make one): opening it to read would block.
    let made = Command::new("mkfifo")
        .arg(r.root.join("fifo"))
        .status()
        .unwrap();
    assert!(made.success());
    std::fs::set_permissions(r.root.join("fifo"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let t = std::time::Instant::now();
    let o = run_in(&r.root, &[], &["/bin/probe", "exec-tricks"]);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    assert_all_refused(
        &o,
        &[
            "refused: execve /proc/self/cwd/tmp/hostlink EACCES",
            "refused: execve /proc/self/root/bin/probe EACCES",
            "refused: execve /proc/kmsg EACCES",
            "refused: execve /fifo EACCES",
            "refused: execve /dev/tty EACCES",
        ],
    );
    let (_, err) = text(&o);
    assert!(
        err.contains("refused exec of /proc/kmsg: not on the image's root"),
        "{err}"
    );
    assert!(
        err.contains("refused exec of /fifo: not a regular file"),
        "{err}"
    );
}

#[test]
fn a_fork_bomb_without_limits_still_stops_at_the_process_rlimit() {
    let r = rootfs();
    let o = run_in(&r.root, &[], &["/bin/probe", "fork-bomb"]);
    let (n, _) = forks_before_refusal(&o);
    assert!(n < 1024, "{n} children with no limit given");
}

#[test]
fn an_exec_from_a_second_thread_is_decided_like_any_other() {
    let r = rootfs();
    let o = run_in(&r.root, &[], &["/bin/probe", "thread-exec"]);
    let (out, err) = text(&o);
    assert_eq!(out, "hello from pid 1\n", "{err}");
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn a_refused_path_with_control_characters_is_reported_escaped() {
    let r = rootfs();
    let o = run_in(
        &r.root,
        &[],
        &["/bin/probe", "copy-and-exec", "/tmp/x\u{1b}[2Jevil"],
    );
    let (_, err) = text(&o);
    assert!(
        err.contains("refused exec of /tmp/x\\u{1b}[2Jevil"),
        "{err}"
    );
    assert!(!err.contains('\u{1b}'), "{err:?}");
}

#[test]
fn a_library_caller_with_threads_gets_a_started_init_even_when_it_asks_for_a_fork() {
    // The test harness runs this on a thread of its own, so this process has several: forking
    // the init here could hand the child a lock another thread holds. The sandbox must start
    // `init_program` instead, and run as well.
    let r = rootfs();
    let out = r.root.parent().unwrap().join("out.log");
    let cfg = ringfence_sandbox::Config {
        source: ringfence_sandbox::Source::Rootfs(r.root.clone()),
        argv: vec!["/bin/probe".into(), "hello".into()],
        env: vec![],
        cwd: "/".into(),
        profile: ringfence_sandbox::seccomp::Profile::named("default").unwrap(),
        limits: Default::default(),
        host_uid: 100_000,
        host_gid: 100_000,
        hostname: "lib".into(),
        init_program: PathBuf::from(env!("CARGO_BIN_EXE_ringfence-sandbox-init")),
        fork_init: true,
        work_dir: r.root.parent().unwrap().join("work"),
        cgroup_root: ringfence_sandbox::run::default_cgroup_root().to_owned(),
        network: ringfence_sandbox::net::Network::None,
        egress: None,
        volumes: vec![],
        expect_digest: None,
        stdout: Some(out.clone()),
        stderr: None,
    };
    // With the program missing, the start fails on it: proof that it was not forked.
    let missing = ringfence_sandbox::Config {
        init_program: r.root.parent().unwrap().join("no-such-init"),
        ..cfg.clone()
    };
    let e = ringfence_sandbox::run(&missing, std::sync::Arc::new(|_: &_| {}))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.starts_with("cannot start the sandbox: starting the sandbox init /")
            && e.ends_with("/no-such-init: No such file or directory (os error 2)"),
        "{e}"
    );
    let outcome = ringfence_sandbox::run(&cfg, std::sync::Arc::new(|_: &_| {})).unwrap();
    assert_eq!(outcome.code(), 0, "{outcome:?}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "hello from pid 1\n");
}
