//! The runtime sandbox against native execution, bubblewrap and crun on one rootfs, in one run:
//! start-to-exit of `/bin/true`, the cost of a filtered syscall (`getppid`), a syscall-heavy
//! loop (create/stat/unlink on tmpfs) and a compute loop. The workload is the sandbox suite's
//! static probe (`crates/test-util/progs/probe.c`), which times its own loops.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use crate::stats::figures;

const PRIVATE_MOUNTS_ENV: &str = "RINGFENCE_BENCH_PRIVATE_MOUNTS";

/// Runs the benchmark (as root).
pub fn run(runs: usize) -> anyhow::Result<()> {
    if std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m))? != 0 {
        bail!("the sandbox benchmark needs root (namespaces, uid maps, cgroups)");
    }
    // crun refuses a hybrid cgroup layout (v1 controllers plus a unified mount). Run the whole
    // comparison — every runner alike — in a private mount namespace without the unified mount.
    if Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists()
        && std::env::var_os(PRIVATE_MOUNTS_ENV).is_none()
    {
        let me = std::env::current_exe()?;
        let status = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg("umount /sys/fs/cgroup/unified && exec \"$0\" \"$@\"")
            .arg(&me)
            .args(std::env::args_os().skip(1))
            .env(PRIVATE_MOUNTS_ENV, "1")
            .status()
            .context("unshare (util-linux)")?;
        std::process::exit(status.code().unwrap_or(1));
    }
    let ringfence = sibling("ringfence")?;
    let init = sibling("ringfence-sandbox-init")?;
    for tool in ["bwrap", "crun", "gcc"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            bail!("{tool} is missing: scripts/install-deps.sh installs it");
        }
    }

    let dir = tempfile::Builder::new()
        .prefix("ringfence-bench-sandbox")
        .tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let rootfs = dir.path().join("rootfs");
    build_rootfs(&rootfs)?;
    let bundle_plain = crun_bundle(dir.path(), "crun-plain", &rootfs, false)?;
    let bundle_limits = crun_bundle(dir.path(), "crun-limits", &rootfs, true)?;
    let r = rootfs.to_string_lossy().into_owned();

    // Runners for one command inside the rootfs; `None` = the library, in-process.
    let native = |args: &[&str]| -> Command {
        let (cmd, rest) = args.split_first().unwrap_or((&"/bin/true", &[]));
        let mut c = Command::new(rootfs.join(cmd.trim_start_matches('/')));
        c.args(rest);
        c
    };
    let rf_cli = |extra: &[&str], args: &[&str]| -> Command {
        let mut c = Command::new(&ringfence);
        c.args(["sandbox", "run", "--rootfs", &r])
            .args(extra)
            .arg("--");
        c.args(args);
        c
    };
    let bwrap = |args: &[&str]| -> Command {
        let mut c = Command::new("bwrap");
        c.args(["--unshare-all", "--die-with-parent", "--ro-bind", &r, "/"]);
        c.args(["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]);
        c.args(args);
        c
    };
    let seq = std::cell::Cell::new(0u64);
    let crun = |bundle: &Path, limits: bool, args: &[&str]| -> anyhow::Result<Command> {
        set_crun_args(bundle, args)?;
        seq.set(seq.get() + 1);
        let mut c = Command::new("crun");
        if !limits {
            c.arg("--cgroup-manager=disabled");
        }
        c.args(["run", "--bundle"]).arg(bundle);
        c.arg(format!("rfbench-{}-{}", std::process::id(), seq.get()));
        Ok(c)
    };
    let lib_cfg = |args: &[&str], profile: &str| -> anyhow::Result<ringfence_sandbox::Config> {
        Ok(ringfence_sandbox::Config {
            source: ringfence_sandbox::Source::Rootfs(rootfs.clone()),
            argv: args.iter().map(|s| (*s).to_owned()).collect(),
            env: vec![],
            cwd: "/".into(),
            profile: ringfence_sandbox::seccomp::Profile::named(profile)?,
            limits: Default::default(),
            host_uid: 100_000,
            host_gid: 100_000,
            hostname: "bench".into(),
            init_program: init.clone(),
            // As the agent runs it (the agent is multi-threaded and cannot fork).
            fork_init: false,
            work_dir: ringfence_sandbox::run::default_work_dir(),
            cgroup_root: ringfence_sandbox::run::default_cgroup_root().to_owned(),
            network: ringfence_sandbox::net::Network::None,
            egress: None,
            volumes: vec![],
            expect_digest: None,
            stdout: None,
            stderr: None,
        })
    };
    let quiet: Arc<dyn Fn(&ringfence_sandbox::supervisor::Event) + Send + Sync> = Arc::new(|_| {});

    // 1. start-to-exit of /bin/true, runners interleaved so drift in the host hits all alike.
    eprintln!("start-to-exit of /bin/true, {runs} runs per runner, interleaved...");
    let names = [
        "native",
        "ringfence (library, as the agent runs it)",
        "ringfence sandbox run (CLI)",
        "bubblewrap",
        "crun (no cgroup)",
        "ringfence sandbox run --memory --pids",
        "crun (cgroup limits)",
    ];
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(runs); names.len()];
    let cfg_true = lib_cfg(&["/bin/true"], "default")?;
    let started = Instant::now();
    for _ in 0..runs {
        for (i, lane) in samples.iter_mut().enumerate() {
            // Built before the clock starts (crun's rewrites its bundle's config.json).
            let cmd = match i {
                0 => Some(native(&["/bin/true"])),
                1 => None,
                2 => Some(rf_cli(&[], &["/bin/true"])),
                3 => Some(bwrap(&["/bin/true"])),
                4 => Some(crun(&bundle_plain, false, &["/bin/true"])?),
                5 => Some(rf_cli(
                    &["--memory", "256M", "--pids", "64"],
                    &["/bin/true"],
                )),
                _ => Some(crun(&bundle_limits, true, &["/bin/true"])?),
            };
            // A quiet gap first, so no start inherits the previous runner's kernel state:
            // moving a process into a cgroup waits for an RCU grace period only when no
            // other move happened in the last one, so back to back, the second of two
            // cgroup runners would be spared the wait the first paid.
            std::thread::sleep(QUIET);
            let t = Instant::now();
            let ok = match cmd {
                Some(c) => status(c)?,
                None => matches!(
                    ringfence_sandbox::run(&cfg_true, Arc::clone(&quiet))?.exit,
                    ringfence_sandbox::Exit::Code(0)
                ),
            };
            lane.push(t.elapsed());
            if !ok {
                bail!(
                    "{} failed to run /bin/true",
                    names.get(i).copied().unwrap_or("?")
                );
            }
        }
    }
    let elapsed = started.elapsed();
    let starts: Vec<_> = samples.into_iter().map(|s| figures(s, elapsed)).collect();

    // 2-4. In-sandbox loops: every runner once per round, ROUNDS rounds, the median kept
    // (this host's syscall timings drift by ±10 % from one second to the next). `{tmp}` is a
    // tmpfs in each: /dev/shm outside a sandbox and in crun, the sandbox's own /tmp otherwise.
    type Runner<'a> = (
        &'static str,
        Box<dyn Fn(&[&str]) -> anyhow::Result<Command> + 'a>,
    );
    let runners: Vec<Runner> = vec![
        (
            "native",
            Box::new(|a: &[&str]| Ok(native(&subst(a, "/dev/shm")))),
        ),
        (
            "ringfence default",
            Box::new(|a: &[&str]| Ok(rf_cli(&["--profile", "default"], &subst(a, "/tmp")))),
        ),
        (
            "ringfence strict",
            Box::new(|a: &[&str]| Ok(rf_cli(&["--profile", "strict"], &subst(a, "/tmp")))),
        ),
        (
            "bubblewrap",
            Box::new(|a: &[&str]| Ok(bwrap(&subst(a, "/tmp")))),
        ),
        (
            "crun",
            Box::new(|a: &[&str]| crun(&bundle_plain, false, &subst(a, "/dev/shm"))),
        ),
    ];
    let loops = |args: &[&str],
                 extra: Option<Runner>|
     -> Vec<(&'static str, anyhow::Result<f64>)> {
        let all: Vec<&Runner> = runners.iter().chain(extra.as_ref()).collect();
        let mut got: Vec<Vec<f64>> = vec![Vec::new(); all.len()];
        let mut errors: Vec<Option<anyhow::Error>> = all.iter().map(|_| None).collect();
        for _ in 0..ROUNDS {
            for ((_, make), (lane, err)) in all.iter().zip(got.iter_mut().zip(errors.iter_mut())) {
                match make(args).and_then(ns_per_op) {
                    Ok(v) => lane.push(v),
                    Err(e) => *err = Some(e),
                }
            }
        }
        all.iter()
            .zip(got.into_iter().zip(errors))
            .map(|((name, _), (mut lane, err))| {
                lane.sort_by(f64::total_cmp);
                let v = match err {
                    Some(e) => Err(e),
                    None => lane.get(lane.len() / 2).copied().context("no sample"),
                };
                (*name, v)
            })
            .collect()
    };
    // Every loop on one core, so the runners never differ by where the scheduler put them.
    let _ = Command::new("taskset")
        .args(["-p", "-c", "1", &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status();
    eprintln!("getppid cost ({ROUNDS} rounds, pinned to cpu 1)...");
    let getppid = loops(
        &["/bin/probe", "getppid", "3000000"],
        Some((
            "any seccomp filter (allow-all, native)",
            Box::new(|_: &[&str]| Ok(native(&["/bin/probe", "getppid-allow-all", "3000000"]))),
        )),
    );
    eprintln!("create/stat/unlink loop on tmpfs ({ROUNDS} rounds)...");
    let fsloop = loops(&["/bin/probe", "fsloop", "50000", "{tmp}"], None);
    eprintln!("compute loop ({ROUNDS} rounds)...");
    let compute = loops(&["/bin/probe", "compute", "300000000"], None);

    // Report.
    println!(
        "\nRuntime sandbox ({runs} starts per runner; loops: median of {ROUNDS} interleaved rounds)"
    );
    println!("  start-to-exit of /bin/true             p50 ms    p99 ms");
    for (name, f) in names.iter().zip(&starts) {
        println!("  {name:<38} {:>7.2}   {:>7.2}", f.p50_ms, f.p99_ms);
    }
    let table = |title: &str, rows: &[(&'static str, anyhow::Result<f64>)]| {
        let base = rows.first().and_then(|r| r.1.as_ref().ok().copied());
        println!("  {title}");
        for (name, v) in rows {
            match (v, base) {
                (Ok(v), Some(b)) => {
                    println!("    {name:<36} {v:>9.2} ns/op  {:.3}x native", v / b)
                }
                (Ok(v), None) => println!("    {name:<36} {v:>9.2} ns/op"),
                (Err(e), _) => println!("    {name:<36} failed: {e:#}"),
            }
        }
    };
    table("getppid (a filtered syscall)", &getppid);
    table("create/stat/unlink on tmpfs", &fsloop);
    table("compute loop", &compute);

    let get = |rows: &[(&str, anyhow::Result<f64>)], name: &str| {
        rows.iter()
            .find(|r| r.0 == name)
            .and_then(|r| r.1.as_ref().ok().copied())
            .unwrap_or(f64::NAN)
    };
    let ratio =
        |rows: &[(&str, anyhow::Result<f64>)], name: &str| get(rows, name) / get(rows, "native");
    let lane = |i: usize| starts.get(i).copied().context("missing lane");
    let (lib, cli, crun_plain) = (lane(1)?, lane(2)?, lane(4)?);
    let getppid_ratio =
        ratio(&getppid, "ringfence default").max(ratio(&getppid, "ringfence strict"));
    let floor = get(&getppid, "any seccomp filter (allow-all, native)");
    let getppid_vs_floor =
        get(&getppid, "ringfence default").max(get(&getppid, "ringfence strict")) / floor;
    let fs_overhead = ratio(&fsloop, "ringfence default") - 1.0;
    let compute_overhead = ratio(&compute, "ringfence default") - 1.0;
    let goals = [
        ("library p50 <= 5 ms", lib.p50_ms <= 5.0),
        ("library p50 <= crun p50", lib.p50_ms <= crun_plain.p50_ms),
        ("CLI p50 <= 5 ms", cli.p50_ms <= 5.0),
        ("CLI p50 <= crun p50", cli.p50_ms <= crun_plain.p50_ms),
        ("filtered syscall <= 1.2x native", getppid_ratio <= 1.2),
        (
            "filtered syscall <= 1.2x allow-all filter",
            getppid_vs_floor <= 1.2,
        ),
        ("syscall-heavy overhead <= 10%", fs_overhead <= 0.10),
        ("compute overhead <= 1%", compute_overhead <= 0.01),
    ];
    for (g, met) in goals {
        println!("  goal {g:<36} {}", if met { "met" } else { "NOT met" });
    }
    let rows_json = |rows: &[(&str, anyhow::Result<f64>)]| {
        rows.iter()
            .map(|(n, v)| (n.to_string(), json!(v.as_ref().ok())))
            .collect::<serde_json::Map<_, _>>()
    };
    println!(
        "{}",
        json!({
            "bench": "sandbox",
            "runs": runs,
            "true_p50_ms": names.iter().zip(&starts).map(|(n, f)| (n.to_string(), json!((f.p50_ms * 100.0).round() / 100.0))).collect::<serde_json::Map<_, _>>(),
            "true_p99_ms": names.iter().zip(&starts).map(|(n, f)| (n.to_string(), json!((f.p99_ms * 100.0).round() / 100.0))).collect::<serde_json::Map<_, _>>(),
            "getppid_ns": rows_json(&getppid),
            "fsloop_ns": rows_json(&fsloop),
            "compute_ns": rows_json(&compute),
            "getppid_ratio": getppid_ratio,
            "getppid_vs_allow_all_filter": getppid_vs_floor,
            "fs_overhead": fs_overhead,
            "compute_overhead": compute_overhead,
            "goals": goals.iter().map(|(g, m)| (g.to_string(), json!(m))).collect::<serde_json::Map<_, _>>(),
        })
    );
    Ok(())
}

pub(crate) fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let p = std::env::current_exe()?.with_file_name(name);
    if !p.is_file() {
        bail!(
            "{} is missing: build it first (cargo build --release -p ringfence-cli)",
            p.display()
        );
    }
    Ok(p)
}

fn status(mut c: Command) -> anyhow::Result<bool> {
    Ok(c.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("{c:?}"))?
        .success())
}

fn ns_per_op(mut c: Command) -> anyhow::Result<f64> {
    let out = c
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("{c:?}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("ns_per_op ")?.trim().parse().ok())
        .with_context(|| {
            format!(
                "{c:?} printed no figure: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

const ROUNDS: usize = 9;
/// The pause before each timed start: longer than a few RCU grace periods at HZ=250.
const QUIET: Duration = Duration::from_millis(30);

fn subst<'a>(args: &[&'a str], tmp: &'a str) -> Vec<&'a str> {
    args.iter()
        .map(|a| if *a == "{tmp}" { tmp } else { *a })
        .collect()
}

fn build_rootfs(rootfs: &Path) -> anyhow::Result<()> {
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin)?;
    for d in ["proc", "tmp", "dev", "sys"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    std::fs::copy("/bin/busybox", bin.join("busybox"))
        .context("/bin/busybox (Debian busybox-static)")?;
    symlink("busybox", bin.join("true"))?;
    symlink("busybox", bin.join("sh"))?;
    ringfence_test_util::probe::build(&bin.join("probe"))
}

/// An OCI bundle for crun over the same rootfs (read-only), from `crun spec`.
fn crun_bundle(dir: &Path, name: &str, rootfs: &Path, limits: bool) -> anyhow::Result<PathBuf> {
    let bundle = dir.join(name);
    std::fs::create_dir_all(&bundle)?;
    let out = Command::new("crun")
        .arg("spec")
        .current_dir(&bundle)
        .output()?;
    if !out.status.success() {
        bail!("crun spec: {}", String::from_utf8_lossy(&out.stderr));
    }
    let path = bundle.join("config.json");
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    let obj = |c: &mut serde_json::Value,
               at: &str|
     -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
        c.pointer_mut(at)
            .and_then(|v| v.as_object_mut())
            .map(std::mem::take)
            .with_context(|| format!("crun spec has no {at}"))
    };
    let mut process = obj(&mut c, "/process")?;
    process.insert("terminal".into(), json!(false));
    let mut linux = obj(&mut c, "/linux")?;
    if limits {
        linux.insert(
            "resources".into(),
            json!({"memory": {"limit": 256u64 << 20}, "pids": {"limit": 64}}),
        );
    }
    let top = c.as_object_mut().context("crun spec is not an object")?;
    top.insert("process".into(), process.into());
    top.insert("linux".into(), linux.into());
    top.insert("root".into(), json!({"path": rootfs, "readonly": true}));
    std::fs::write(&path, serde_json::to_vec_pretty(&c)?)?;
    Ok(bundle)
}

fn set_crun_args(bundle: &Path, args: &[&str]) -> anyhow::Result<()> {
    let path = bundle.join("config.json");
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    let current = c
        .pointer_mut("/process/args")
        .context("crun spec has no process.args")?;
    if *current != json!(args) {
        *current = json!(args);
        std::fs::write(&path, serde_json::to_vec_pretty(&c)?)?;
    }
    Ok(())
}
