//! The node agent's task runner: each task in the runtime sandbox, under a host uid of its own,
//! with its own working directory (bound at `/work`, never executable), its own environment
//! and its stdout/stderr captured to files; the image checked against the digest the control
//! plane admitted; a crashed task restarted with exponential backoff; every state change
//! reported.

use std::collections::BTreeSet;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringfence_provenance::oci::ImageLayout;
use ringfence_provenance::statement::Sha256;
use ringfence_sandbox::cgroup::Limits;
use ringfence_sandbox::seccomp::Profile;
use ringfence_sandbox::setup::Volume;
use ringfence_sandbox::{Config, Exit, Killer, Source};
use serde::Serialize;

/// What the control plane asks this agent to run.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    /// Task id (`<namespace>.<service>.<job>.<replica>`): letters, digits, `.`, `-`, `_`.
    pub id: String,
    /// The image, an OCI layout the agent fetched.
    pub image: PathBuf,
    /// The manifest digest admission approved; the layout must name exactly this image.
    pub digest: Sha256,
    /// Command and arguments.
    pub argv: Vec<String>,
    /// Environment (`K=V`).
    pub env: Vec<String>,
    /// Resource limits.
    pub limits: Limits,
    /// Syscall profile name.
    pub profile: String,
    /// Host directories bound into the sandbox besides `/work` (the Workload API socket's).
    pub volumes: Vec<Volume>,
}

/// Restart backoff.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
    /// A run at least this long resets the delay.
    pub stable_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
            stable_after: Duration::from_secs(10),
        }
    }
}

/// The runner's settings.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Where task directories live (`<root>/tasks/<id>/{work,stdout.log,stderr.log}`).
    pub root: PathBuf,
    /// The sandbox's init program.
    pub init_program: PathBuf,
    /// First host uid (and gid) handed to tasks.
    pub uid_base: u32,
    /// How many uids the runner may hand out.
    pub uid_count: u32,
    /// Restart backoff.
    pub backoff: Backoff,
    /// A log larger than this is moved to `<name>.1` (replacing the previous one) before the
    /// task (re)starts.
    pub log_max_bytes: u64,
}

/// Why a task cannot be started.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The task id is not usable as a directory name.
    #[error("task id {0:?}: use letters, digits, '.', '-' and '_' (at most 128)")]
    BadId(String),
    /// A task with this id runs already.
    #[error("task {0} is already running here")]
    Duplicate(String),
    /// The image is not the one admitted.
    #[error("task {id}: image {path}: {why}")]
    Image {
        /// The task.
        id: String,
        /// The layout.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// No uid left.
    #[error("no free task uid in {base}..{end}; raise uid_count")]
    NoUid {
        /// First uid.
        base: u32,
        /// One past the last.
        end: u32,
    },
    /// The profile name is unknown.
    #[error(transparent)]
    Profile(#[from] ringfence_sandbox::seccomp::ProfileError),
    /// Filesystem.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Where a task is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TaskState {
    /// Its sandbox is being started.
    Starting,
    /// Running; `pid` is its sandbox's init on the host.
    Running {
        /// Host pid of the sandbox's init.
        pid: u32,
    },
    /// Crashed; restarts after `delay_ms`.
    Backoff {
        /// How it ended.
        exit: String,
        /// Delay before the restart.
        delay_ms: u64,
    },
    /// Ended with exit code 0: done, not restarted.
    Completed,
    /// Stopped on request.
    Stopped,
    /// Its sandbox could not start; not retried until the spec changes.
    Failed {
        /// Why.
        reason: String,
    },
}

/// A state change or a drift refusal, as reported to the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskEvent {
    /// The task.
    pub id: String,
    /// Its state.
    pub state: TaskState,
    /// Restarts so far.
    pub restarts: u32,
    /// Set when the sandbox refused an exec (drift); the state is then unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift: Option<String>,
}

/// A running task.
#[derive(Debug)]
pub struct TaskHandle {
    id: String,
    uid: u32,
    dir: PathBuf,
    stop: Arc<AtomicBool>,
    killer: Arc<Mutex<Option<Killer>>>,
    state: Arc<Mutex<(TaskState, u32)>>,
    thread: Option<std::thread::JoinHandle<()>>,
    uids: Arc<Mutex<BTreeSet<u32>>>,
}

impl TaskHandle {
    /// The host uid the task's root maps to.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// The task's directory (`work/`, `stdout.log`, `stderr.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The current state and restart count.
    pub fn state(&self) -> (TaskState, u32) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops the task (its whole sandbox) and waits for the supervising thread.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(k) = self
            .killer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            k.kill();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.uids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.uid);
    }

    /// The task id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Drop for TaskHandle {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Starts and supervises tasks.
#[derive(Debug)]
pub struct Runner {
    cfg: RunnerConfig,
    uids: Arc<Mutex<BTreeSet<u32>>>,
    running: Arc<Mutex<BTreeSet<String>>>,
    events: Sender<TaskEvent>,
}

/// Whether `id` is usable as a task id (and so as a directory name).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

impl Runner {
    /// A runner; state changes of every task arrive on the returned receiver.
    pub fn new(cfg: RunnerConfig) -> (Runner, Receiver<TaskEvent>) {
        let (tx, rx) = channel();
        (
            Runner {
                cfg,
                uids: Arc::default(),
                running: Arc::default(),
                events: tx,
            },
            rx,
        )
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RunnerError + '_ {
        move |source| RunnerError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// Checks the image against the admitted digest, prepares the task's directory and uid,
    /// and starts supervising it on a thread of its own (a sandbox dies with the thread that
    /// started it).
    pub fn start(&self, spec: TaskSpec) -> Result<TaskHandle, RunnerError> {
        if !valid_id(&spec.id) {
            return Err(RunnerError::BadId(spec.id));
        }
        let profile = Profile::named(&spec.profile)?;
        let image_err = |why: String| RunnerError::Image {
            id: spec.id.clone(),
            path: spec.image.clone(),
            why,
        };
        let layout = ImageLayout::open(&spec.image).map_err(|e| image_err(e.to_string()))?;
        let image = layout.single().map_err(|e| image_err(e.to_string()))?;
        if image.digest != spec.digest {
            return Err(image_err(format!(
                "is {}, but {} was admitted",
                image.digest, spec.digest
            )));
        }
        {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            if !running.insert(spec.id.clone()) {
                return Err(RunnerError::Duplicate(spec.id));
            }
        }
        let release_id = |running: &Arc<Mutex<BTreeSet<String>>>, id: &str| {
            running.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        };
        let uid = {
            let mut uids = self.uids.lock().unwrap_or_else(|p| p.into_inner());
            let end = self.cfg.uid_base.saturating_add(self.cfg.uid_count);
            match (self.cfg.uid_base..end).find(|u| !uids.contains(u)) {
                Some(u) => {
                    uids.insert(u);
                    u
                }
                None => {
                    release_id(&self.running, &spec.id);
                    return Err(RunnerError::NoUid {
                        base: self.cfg.uid_base,
                        end,
                    });
                }
            }
        };
        let dir = self.cfg.root.join("tasks").join(&spec.id);
        let prepared = (|| -> Result<PathBuf, RunnerError> {
            // Every level traversable by the task's uid (to bind /work), writable by root only.
            for d in [
                self.cfg.root.clone(),
                self.cfg.root.join("tasks"),
                dir.clone(),
            ] {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o711)
                    .create(&d)
                    .map_err(Self::io(&d))?;
                std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o711))
                    .map_err(Self::io(&d))?;
            }
            let work = dir.join("work");
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&work)
                .map_err(Self::io(&work))?;
            // A directory left by an earlier run of this task id may hold files of another uid:
            // everything in it becomes this task's (symlinks themselves, never their targets).
            chown_tree(&work, uid).map_err(Self::io(&work))?;
            Ok(work)
        })();
        let work = match prepared {
            Ok(w) => w,
            Err(e) => {
                release_id(&self.running, &spec.id);
                self.uids
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&uid);
                return Err(e);
            }
        };
        let sandbox = Config {
            source: Source::Image(spec.image.clone()),
            argv: spec.argv.clone(),
            env: spec.env.clone(),
            cwd: "/work".into(),
            profile,
            limits: spec.limits,
            host_uid: uid,
            host_gid: uid,
            hostname: spec.id.chars().take(64).collect(),
            init_program: self.cfg.init_program.clone(),
            // The agent is multi-threaded: the init is always started.
            fork_init: false,
            work_dir: self.cfg.root.join("images"),
            cgroup_root: ringfence_sandbox::run::default_cgroup_root().to_owned(),
            network: ringfence_sandbox::net::Network::None,
            egress: None,
            volumes: std::iter::once(Volume {
                host: work,
                inside: "/work".into(),
                read_only: false,
            })
            .chain(spec.volumes.iter().cloned())
            .collect(),
            expect_digest: Some(spec.digest.clone()),
            stdout: Some(dir.join("stdout.log")),
            stderr: Some(dir.join("stderr.log")),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let killer = Arc::new(Mutex::new(None));
        let state = Arc::new(Mutex::new((TaskState::Starting, 0u32)));
        let thread = {
            let (stop, killer, state) =
                (Arc::clone(&stop), Arc::clone(&killer), Arc::clone(&state));
            let events = self.events.clone();
            let running = Arc::clone(&self.running);
            let id = spec.id.clone();
            let backoff = self.cfg.backoff;
            let log_max_bytes = self.cfg.log_max_bytes;
            std::thread::Builder::new()
                .name(format!("task {id}"))
                .spawn(move || {
                    supervise(
                        &id,
                        &sandbox,
                        Policy {
                            backoff,
                            log_max_bytes,
                        },
                        &stop,
                        &killer,
                        &state,
                        &events,
                    );
                    release_id(&running, &id);
                })
                .map_err(Self::io(&dir))?
        };
        Ok(TaskHandle {
            id: spec.id,
            uid,
            dir,
            stop,
            killer,
            state,
            thread: Some(thread),
            uids: Arc::clone(&self.uids),
        })
    }
}

fn rotate(log: &Path, max: u64) {
    if std::fs::metadata(log)
        .map(|m| m.len() > max)
        .unwrap_or(false)
    {
        let mut old = log.as_os_str().to_owned();
        old.push(".1");
        let _ = std::fs::rename(log, PathBuf::from(old));
    }
}

fn chown_tree(dir: &Path, uid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(uid))?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            chown_tree(&path, uid)?;
        } else {
            std::os::unix::fs::lchown(&path, Some(uid), Some(uid))?;
        }
    }
    Ok(())
}

fn describe(exit: Exit) -> String {
    match exit {
        Exit::Code(c) => format!("exit code {c}"),
        Exit::Signal(s) => format!("signal {s}"),
    }
}

/// How a task is restarted and its logs kept.
#[derive(Debug, Clone, Copy)]
struct Policy {
    backoff: Backoff,
    log_max_bytes: u64,
}

fn supervise(
    id: &str,
    cfg: &Config,
    policy: Policy,
    stop: &AtomicBool,
    killer: &Mutex<Option<Killer>>,
    state: &Mutex<(TaskState, u32)>,
    events: &Sender<TaskEvent>,
) {
    let set = |s: TaskState, restarts: u32| {
        *state.lock().unwrap_or_else(|p| p.into_inner()) = (s.clone(), restarts);
        let _ = events.send(TaskEvent {
            id: id.to_owned(),
            state: s,
            restarts,
            drift: None,
        });
    };
    let mut restarts = 0u32;
    let mut delay = policy.backoff.initial;
    // Drift is reported as it happens; allowed execs are not news.
    let drift: Arc<dyn Fn(&ringfence_sandbox::supervisor::Event) + Send + Sync> = {
        let events = events.clone();
        let id = id.to_owned();
        Arc::new(move |e: &ringfence_sandbox::supervisor::Event| {
            if matches!(e, ringfence_sandbox::supervisor::Event::ExecRefused { .. }) {
                let _ = events.send(TaskEvent {
                    id: id.clone(),
                    state: TaskState::Running { pid: 0 },
                    restarts: 0,
                    drift: Some(e.to_string()),
                });
            }
        })
    };
    loop {
        if stop.load(Ordering::SeqCst) {
            set(TaskState::Stopped, restarts);
            return;
        }
        set(TaskState::Starting, restarts);
        for log in [&cfg.stdout, &cfg.stderr].into_iter().flatten() {
            rotate(log, policy.log_max_bytes);
        }
        let running = match ringfence_sandbox::start(cfg, Arc::clone(&drift)) {
            Ok(r) => r,
            Err(e) => {
                set(
                    TaskState::Failed {
                        reason: e.to_string(),
                    },
                    restarts,
                );
                return;
            }
        };
        *killer.lock().unwrap_or_else(|p| p.into_inner()) = Some(running.killer());
        // A stop between the check above and the killer being known must still stop it.
        if stop.load(Ordering::SeqCst) {
            running.killer().kill();
        }
        set(TaskState::Running { pid: running.pid() }, restarts);
        let began = Instant::now();
        let outcome = running.wait();
        if stop.load(Ordering::SeqCst) {
            set(TaskState::Stopped, restarts);
            return;
        }
        let exit = match outcome {
            Ok(o) if o.exit == Exit::Code(0) => {
                set(TaskState::Completed, restarts);
                return;
            }
            Ok(o) => {
                let mut d = describe(o.exit);
                if o.oom_killed {
                    d.push_str(" (out of memory)");
                }
                d
            }
            Err(e) => e.to_string(),
        };
        if began.elapsed() >= policy.backoff.stable_after {
            delay = policy.backoff.initial;
        }
        set(
            TaskState::Backoff {
                exit,
                delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            },
            restarts,
        );
        // Sleep in slices so a stop is honoured promptly.
        let until = Instant::now() + delay;
        while Instant::now() < until {
            if stop.load(Ordering::SeqCst) {
                set(TaskState::Stopped, restarts);
                return;
            }
            std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
        }
        delay = (delay * 2).min(policy.backoff.max);
        restarts = restarts.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_are_safe_directory_names() {
        assert!(valid_id("shop.web.job-1.0"));
        for bad in ["", "../x", "a/b", ".hidden", "a b", &"x".repeat(129)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }
}
