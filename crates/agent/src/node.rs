//! The node agent's main loop: register the machine, follow its assignments, fetch each
//! task's image by the admitted digest, run the task in the sandbox with a Workload API socket
//! of its own (the task's SVID obtained by CSR from the CA), report every task's state, and
//! stop what is no longer assigned.
//!
//! The agent holds no decision: what it runs is what the control plane assigned, and the CA
//! asks the control plane again before it signs anything this agent requests.

use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use async_trait::async_trait;
use ringfence_audit::{AuditSink, Decision, Event};
use ringfence_controlplane::{Assignment, MachineRecord, Registration, TaskReport};
use ringfence_core::{Clock, MachineId, TrustDomain};
use ringfence_identity::IssuanceService;
use ringfence_identity::workload_api::{
    LocalIssuer, SvidSource, WorkloadApi, X509Material, run_rotator_from,
};
use ringfence_provenance::oci::ImageLayout;
use ringfence_provenance::statement::Sha256;
use ringfence_sandbox::cgroup::Limits;
use ringfence_sandbox::setup::Volume;
use tokio::sync::watch;

use crate::runner::{Runner, RunnerConfig, TaskEvent, TaskHandle, TaskSpec, TaskState};

/// The shortest time between two reports a task's news triggers.
const REPORT_GAP: Duration = Duration::from_millis(20);

/// Where a task finds its Workload API socket.
pub const SOCKET_DIR_INSIDE: &str = "/run/spiffe";
/// The socket's file name (`SPIFFE_ENDPOINT_SOCKET=unix:///run/spiffe/workload.sock`).
pub const SOCKET_NAME: &str = "workload.sock";

/// What an agent needs from the control plane.
#[async_trait]
pub trait ControlPlaneApi: Send + Sync {
    /// Registers this machine.
    async fn register(&self, reg: &Registration) -> Result<MachineRecord, String>;
    /// This machine's assignments.
    async fn assignments(&self, machine: &str) -> Result<Vec<Assignment>, String>;
    /// Reports task states (and is the machine's heartbeat).
    async fn report(&self, machine: &str, reports: &[TaskReport]) -> Result<(), String>;
    /// Writes the image with manifest digest `digest` as an OCI layout into `dir`.
    async fn fetch_image(&self, digest: &Sha256, dir: &Path) -> Result<(), String>;
    /// Where this machine's tasks obtain their SVIDs (the CA, which asks the control plane).
    fn svids(&self, machine: &MachineId) -> Arc<dyn SvidSource>;
    /// Where the agent records what happened to its tasks (starts, exits, stops, refused
    /// execs): the audit log, or a local spool forwarded to it.
    fn audit(&self) -> Arc<dyn AuditSink>;
    /// The trust domain (the agent records as `spiffe://<td>/machine/<id>`).
    fn trust_domain(&self) -> TrustDomain;
}

/// The agent's settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The registration it sends.
    pub registration: Registration,
    /// The task runner's settings (`root` holds tasks, images and sockets).
    pub runner: RunnerConfig,
    /// How often it looks at its assignments and reports.
    pub poll: Duration,
    /// Syscall profile for every task.
    pub profile: String,
}

struct Running {
    assignment: Assignment,
    handle: Option<TaskHandle>,
    api: tokio::task::JoinHandle<()>,
    api_stop: Option<tokio::sync::oneshot::Sender<()>>,
    socket: PathBuf,
    rotator: tokio::task::JoinHandle<()>,
    svid: watch::Receiver<Option<X509Material>>,
    state: String,
    detail: String,
    restarts: u32,
}

/// Runs the agent until `shutdown` turns true; every task is stopped before it returns.
pub async fn run(
    api: Arc<dyn ControlPlaneApi>,
    cfg: AgentConfig,
    clock: Arc<dyn Clock>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let machine_id = cfg.registration.machine.clone();
    let machine = MachineId::parse(&machine_id).map_err(|e| format!("machine id: {e}"))?;
    // Registration is retried while the control plane cannot be reached.
    let record = loop {
        match api.register(&cfg.registration).await {
            Ok(r) => break r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot register; retrying in 1 s");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => {}
                }
                if *shutdown.borrow() {
                    return Ok(());
                }
            }
        }
    };
    tracing::info!(machine = %machine_id, pool = %record.pool, "registered");
    let audit = api.audit();
    let actor = api
        .trust_domain()
        .workload(&["machine", &machine_id])
        .map_err(|e| e.to_string())?;
    let note = |action: &str, a: &Assignment, d: Decision, why: &str| {
        Event::new(clock.now(), actor.clone(), action, a.task.clone(), d, why)
            .with_detail("job", &a.job)
            .with_detail("spiffe_id", a.spiffe_id.as_str())
            .with_detail("digest", &a.digest)
    };
    let mut journal: Vec<Event> = Vec::new();
    // Runner events for tasks whose start has not been collected yet (the runner reports
    // while `start` is still returning): kept until the task is among `tasks`.
    let mut early: Vec<TaskEvent> = Vec::new();
    let (runner, events) = Runner::new(cfg.runner.clone());
    let runner = Arc::new(runner);
    // A state change or a new SVID is reported at once, not at the next poll: runner events
    // and SVID changes wake the loop.
    let wake = Arc::new(tokio::sync::Notify::new());
    let events = forward(events, Arc::clone(&wake));
    let mut tasks: BTreeMap<String, Running> = BTreeMap::new();
    // Tasks that could not start, with the assignment they could not start as: retried when
    // their assignment changes.
    let mut failed: BTreeMap<String, (Assignment, String)> = BTreeMap::new();
    // Tasks being started (image fetch, sandbox setup): off the loop, so a slow fetch never
    // delays the heartbeat. Fetches are one at a time (replicas share an image).
    let mut starting: BTreeMap<
        String,
        (Assignment, tokio::task::JoinHandle<Result<Running, String>>),
    > = BTreeMap::new();
    let fetching = Arc::new(tokio::sync::Mutex::new(()));
    let shared = Arc::new(cfg.clone());
    let mut next_poll = tokio::time::Instant::now();
    loop {
        let finished: Vec<String> = starting
            .iter()
            .filter(|(_, (_, h))| h.is_finished())
            .map(|(id, _)| id.clone())
            .collect();
        for id in finished {
            if let Some((a, h)) = starting.remove(&id) {
                match h.await {
                    Ok(Ok(r)) => {
                        journal.push(note(
                            "agent.task.start",
                            &a,
                            Decision::Info,
                            "started in the sandbox",
                        ));
                        tasks.insert(id, r);
                    }
                    Ok(Err(why)) => {
                        tracing::warn!(task = %id, error = %why, "cannot start the task");
                        journal.push(note("agent.task.failed", &a, Decision::Error, &why));
                        failed.insert(id, (a, why));
                    }
                    Err(e) => {
                        let why = format!("the start failed: {e}");
                        journal.push(note("agent.task.failed", &a, Decision::Error, &why));
                        failed.insert(id, (a, why));
                    }
                }
            }
        }
        let polling = tokio::time::Instant::now() >= next_poll;
        if polling {
            next_poll = tokio::time::Instant::now() + cfg.poll;
        }
        let assigned = if polling {
            Some(api.assignments(&machine_id).await)
        } else {
            None
        };
        match assigned {
            None => {}
            Some(Ok(assigned)) => {
                let wanted: BTreeMap<String, Assignment> =
                    assigned.into_iter().map(|a| (a.task.clone(), a)).collect();
                let gone: Vec<String> = tasks
                    .iter()
                    .filter(|(id, r)| wanted.get(*id) != Some(&r.assignment))
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in gone {
                    if let Some(r) = tasks.remove(&id) {
                        tracing::info!(task = %id, "no longer assigned here: stopping");
                        journal.push(note(
                            "agent.task.stop",
                            &r.assignment,
                            Decision::Info,
                            "no longer assigned to this machine",
                        ));
                        stop(r).await;
                    }
                }
                failed.retain(|id, (a, _)| wanted.get(id) == Some(a));
                // A task still starting when its assignment changes is stopped once started
                // (it is then among `tasks`, unwanted).
                for (id, a) in wanted {
                    if tasks.contains_key(&id)
                        || failed.contains_key(&id)
                        || starting.contains_key(&id)
                    {
                        continue;
                    }
                    let (api, runner, cfg, machine, clock, wake, fetching) = (
                        Arc::clone(&api),
                        Arc::clone(&runner),
                        Arc::clone(&shared),
                        machine.clone(),
                        Arc::clone(&clock),
                        Arc::clone(&wake),
                        Arc::clone(&fetching),
                    );
                    let assignment = a.clone();
                    let h = tokio::spawn(async move {
                        let r = start(
                            &api, &runner, &cfg, &machine, &clock, assignment, &wake, &fetching,
                        )
                        .await;
                        wake.notify_one();
                        r
                    });
                    starting.insert(id, (a, h));
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cannot read assignments; keeping tasks as they are");
            }
        }
        for (a, action, d, why) in drain(&events, &mut tasks, &starting, &mut early) {
            journal.push(note(action, &a, d, &why));
        }
        // Durable before the report goes (in the log, or in the spool while the control
        // plane cannot be reached).
        for e in std::mem::take(&mut journal) {
            if let Err(err) = audit.record(&e).await {
                tracing::error!(error = %err, action = %e.action, task = %e.target, "cannot record an audit event");
            }
        }
        let mut reports: Vec<TaskReport> = tasks
            .values()
            .map(|r| TaskReport {
                task: r.assignment.task.clone(),
                state: r.state.clone(),
                detail: r.detail.clone(),
                restarts: r.restarts,
                svid: r.svid.borrow().is_some(),
            })
            .collect();
        reports.extend(starting.keys().map(|id| TaskReport {
            task: id.clone(),
            state: "starting".into(),
            detail: "fetching its image and preparing its sandbox".into(),
            restarts: 0,
            svid: false,
        }));
        reports.extend(failed.iter().map(|(id, (_, why))| TaskReport {
            task: id.clone(),
            state: "failed".into(),
            detail: why.clone(),
            restarts: 0,
            svid: false,
        }));
        if let Err(e) = api.report(&machine_id, &reports).await {
            tracing::warn!(error = %e, "cannot report to the control plane");
        }
        tokio::select! {
            () = tokio::time::sleep_until(next_poll) => {}
            () = wake.notified() => {
                // At most one extra report per REPORT_GAP, however busy the tasks are.
                tokio::time::sleep(REPORT_GAP.min(cfg.poll)).await;
            }
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            break;
        }
    }
    for (_, (_, h)) in std::mem::take(&mut starting) {
        if let Ok(Ok(r)) = h.await {
            stop(r).await;
        }
    }
    for (_, r) in std::mem::take(&mut tasks) {
        stop(r).await;
    }
    Ok(())
}

/// Moves the runner's events to a channel the loop drains, waking the loop for each.
fn forward(events: Receiver<TaskEvent>, wake: Arc<tokio::sync::Notify>) -> Receiver<TaskEvent> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        while let Ok(ev) = events.recv() {
            // Drift is logged, not reported: a task looping on refused execs must not turn
            // into a stream of control-plane writes.
            let news = ev.drift.is_none();
            if tx.send(ev).is_err() {
                return;
            }
            if news {
                wake.notify_one();
            }
        }
    });
    rx
}

/// What the runner reported, applied to `tasks`; the audit-worthy part returned (exits and
/// refused execs).
fn drain<T>(
    events: &Receiver<TaskEvent>,
    tasks: &mut BTreeMap<String, Running>,
    starting: &BTreeMap<String, T>,
    early: &mut Vec<TaskEvent>,
) -> Vec<(Assignment, &'static str, Decision, String)> {
    let mut out = Vec::new();
    let mut pending: Vec<TaskEvent> = std::mem::take(early);
    while let Ok(ev) = events.try_recv() {
        pending.push(ev);
    }
    for ev in pending {
        let Some(r) = tasks.get_mut(&ev.id) else {
            if starting.contains_key(&ev.id) {
                early.push(ev);
            }
            continue;
        };
        if let Some(d) = ev.drift {
            tracing::warn!(task = %ev.id, drift = %d, "exec refused in the sandbox");
            out.push((
                r.assignment.clone(),
                "agent.drift",
                Decision::Deny,
                format!("exec refused (not in the verified image): {d}"),
            ));
            continue;
        }
        match &ev.state {
            TaskState::Backoff { exit, delay_ms } => out.push((
                r.assignment.clone(),
                "agent.task.exit",
                Decision::Info,
                format!("{exit}; restarting in {delay_ms} ms"),
            )),
            TaskState::Failed { reason } => out.push((
                r.assignment.clone(),
                "agent.task.exit",
                Decision::Error,
                reason.clone(),
            )),
            TaskState::Completed => out.push((
                r.assignment.clone(),
                "agent.task.exit",
                Decision::Info,
                "completed".into(),
            )),
            _ => {}
        }
        r.restarts = ev.restarts;
        (r.state, r.detail) = match ev.state {
            TaskState::Starting => ("starting".into(), String::new()),
            TaskState::Running { pid } => ("running".into(), format!("pid {pid}")),
            TaskState::Backoff { exit, delay_ms } => (
                "backoff".into(),
                format!("{exit}; restarting in {delay_ms} ms"),
            ),
            TaskState::Completed => ("completed".into(), String::new()),
            TaskState::Stopped => ("stopped".into(), String::new()),
            TaskState::Failed { reason } => ("failed".into(), reason),
        };
    }
    out
}

async fn stop(mut r: Running) {
    // The server stops accepting and closes its listener; then the socket file goes.
    if let Some(s) = r.api_stop.take() {
        let _ = s.send(());
    }
    if tokio::time::timeout(Duration::from_secs(2), &mut r.api)
        .await
        .is_err()
    {
        r.api.abort();
    }
    let _ = std::fs::remove_file(&r.socket);
    r.rotator.abort();
    if let Some(h) = r.handle.take() {
        let _ = tokio::task::spawn_blocking(move || h.stop()).await;
    }
}

fn private_dir(p: &Path, mode: u32) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(p)
        .map_err(|e| format!("{}: {e}", p.display()))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: {e}", p.display()))
}

/// The image's entrypoint and default arguments (its OCI config).
fn entrypoint(layout: &Path) -> Result<(Vec<String>, Vec<String>), String> {
    let l = ImageLayout::open(layout).map_err(|e| e.to_string())?;
    let image = l.single().map_err(|e| e.to_string())?;
    let digest = Sha256::parse(&image.config.digest).map_err(|e| e.to_string())?;
    let bytes = std::fs::read(l.blob_path(&digest)).map_err(|e| format!("image config: {e}"))?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("image config: {e}"))?;
    let list = |k: &str| -> Vec<String> {
        v.get("config")
            .and_then(|c| c.get(k))
            .and_then(|e| e.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok((list("Entrypoint"), list("Cmd")))
}

#[allow(clippy::too_many_arguments)]
async fn start(
    api: &Arc<dyn ControlPlaneApi>,
    runner: &Arc<Runner>,
    cfg: &AgentConfig,
    machine: &MachineId,
    clock: &Arc<dyn Clock>,
    a: Assignment,
    wake: &Arc<tokio::sync::Notify>,
    fetching: &tokio::sync::Mutex<()>,
) -> Result<Running, String> {
    if !crate::runner::valid_id(&a.task) {
        return Err(format!(
            "task id {:?}: use letters, digits, '.', '-' and '_' (at most 128)",
            a.task
        ));
    }
    let digest = Sha256::parse(&a.digest).map_err(|e| format!("digest: {e}"))?;
    let root = &cfg.runner.root;
    // The agent's root must be traversable by the tasks' uids (their rootfs and /work are
    // under it); the fetched layouts are the agent's alone.
    private_dir(root, 0o711)?;
    private_dir(&root.join("oci"), 0o700)?;
    let layout = root.join("oci").join(digest.hex());
    let guard = fetching.lock().await;
    if !layout.join("index.json").exists() {
        let tmp = root.join("oci").join(format!(".{}.partial", digest.hex()));
        let _ = std::fs::remove_dir_all(&tmp);
        api.fetch_image(&digest, &tmp).await?;
        std::fs::rename(&tmp, &layout).map_err(|e| format!("{}: {e}", layout.display()))?;
    }
    drop(guard);
    let (mut argv, cmd) = entrypoint(&layout)?;
    argv.extend(if a.args.is_empty() {
        cmd
    } else {
        a.args.clone()
    });
    if argv.is_empty() {
        return Err("the image has no entrypoint and the job no arguments".into());
    }
    // The socket directory: traversable, written by root only; the socket itself is handed
    // to the task's uid alone.
    let sockets = root.join("sockets");
    private_dir(&sockets, 0o711)?;
    let sock_dir = sockets.join(&a.task);
    private_dir(&sock_dir, 0o711)?;
    let mut env = a.env.clone();
    env.push(format!(
        "SPIFFE_ENDPOINT_SOCKET=unix://{SOCKET_DIR_INSIDE}/{SOCKET_NAME}"
    ));
    let spec = TaskSpec {
        id: a.task.clone(),
        image: layout,
        digest,
        argv,
        env,
        limits: Limits {
            memory: a.memory_limit,
            pids: None,
            cpu: a.cpu_limit,
        },
        profile: cfg.profile.clone(),
        volumes: vec![Volume {
            host: sock_dir.clone(),
            inside: SOCKET_DIR_INSIDE.into(),
            read_only: true,
        }],
    };
    let handle = {
        let runner = Arc::clone(runner);
        tokio::task::spawn_blocking(move || runner.start(spec))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?
    };
    let (tx, rx) = watch::channel(None);
    let rotator = tokio::spawn(run_rotator_from(
        api.svids(machine),
        a.spiffe_id.clone(),
        Arc::clone(clock),
        tx,
    ));
    {
        // A new SVID is news for the control plane.
        let (mut svid, wake) = (rx.clone(), Arc::clone(wake));
        tokio::spawn(async move {
            while svid.changed().await.is_ok() {
                wake.notify_one();
            }
        });
    }
    let socket: PathBuf = sock_dir.join(SOCKET_NAME);
    let server = WorkloadApi::new(rx.clone()).with_socket_owner(handle.uid());
    let task = a.task.clone();
    let (api_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let path = socket.clone();
    let api_task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        if let Err(e) = server.serve(&path, shutdown).await {
            tracing::error!(%task, error = %e, "the task's Workload API stopped");
        }
    });
    Ok(Running {
        assignment: a,
        handle: Some(handle),
        api: api_task,
        api_stop: Some(api_stop),
        socket,
        rotator,
        svid: rx,
        state: "starting".into(),
        detail: String::new(),
        restarts: 0,
    })
}

/// The control plane in the same process: the agents `ringfence up` starts on the control
/// plane's own host. Their machines register as [`HostTrust::ControlPlaneHost`]; an agent
/// that connects from anywhere else never gets that trust.
///
/// [`HostTrust::ControlPlaneHost`]: ringfence_controlplane::HostTrust::ControlPlaneHost
#[derive(Clone)]
pub struct Local {
    /// The control plane.
    pub cp: ringfence_controlplane::ControlPlane,
    /// The artifact store images are fetched from.
    pub artifacts: ringfence_bab::artifacts::ArtifactStore,
    /// The CA.
    pub issuance: Arc<IssuanceService>,
    /// The audit log.
    pub audit: Arc<dyn AuditSink>,
}

impl std::fmt::Debug for Local {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local").finish_non_exhaustive()
    }
}

#[async_trait]
impl ControlPlaneApi for Local {
    async fn register(&self, reg: &Registration) -> Result<MachineRecord, String> {
        self.cp
            .register(reg, ringfence_controlplane::HostTrust::ControlPlaneHost)
            .await
            .map_err(|e| e.to_string())
    }

    async fn assignments(&self, machine: &str) -> Result<Vec<Assignment>, String> {
        self.cp
            .assignments(machine)
            .await
            .map_err(|e| e.to_string())
    }

    async fn report(&self, machine: &str, reports: &[TaskReport]) -> Result<(), String> {
        self.cp
            .report(machine, reports)
            .await
            .map_err(|e| e.to_string())
    }

    async fn fetch_image(&self, digest: &Sha256, dir: &Path) -> Result<(), String> {
        let artifacts = self.artifacts.clone();
        let (digest, dir) = (digest.clone(), dir.to_owned());
        tokio::task::spawn_blocking(move || artifacts.export(&digest, &dir))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    fn svids(&self, machine: &MachineId) -> Arc<dyn SvidSource> {
        Arc::new(LocalIssuer::new(
            Arc::clone(&self.issuance),
            machine.clone(),
        ))
    }

    fn audit(&self) -> Arc<dyn AuditSink> {
        Arc::clone(&self.audit)
    }

    fn trust_domain(&self) -> TrustDomain {
        self.cp.settings().trust_domain.clone()
    }
}
