//! Real etcd members for tests: each on free loopback ports with its own temporary data
//! directory, stopped by PID (SIGKILL) when the test asks or when the fixture is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use etcd_client::Client;

use crate::free_port;

/// Where the etcd binary is: `$RINGFENCE_ETCD`, else `etcd` on `PATH`, else `/usr/bin/etcd`.
pub fn etcd_binary() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("RINGFENCE_ETCD") {
        return Ok(PathBuf::from(p));
    }
    let candidates = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("etcd"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    candidates
        .into_iter()
        .chain([PathBuf::from("/usr/bin/etcd")])
        .find(|p| p.is_file())
        .context(
            "etcd is not installed: run scripts/test.sh (it installs the Debian package etcd-server) \
             or set RINGFENCE_ETCD to the etcd binary",
        )
}

/// One member of a test cluster.
#[derive(Debug)]
pub struct Member {
    /// The member's name (`m0`, `m1`, ...).
    pub name: String,
    /// Client port on 127.0.0.1.
    pub client_port: u16,
    /// Peer port on 127.0.0.1.
    pub peer_port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl Member {
    /// `127.0.0.1:<client port>`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The member's PID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Child::kill sends SIGKILL to this PID only.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The tail of the member's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// A running etcd cluster of one or more members.
#[derive(Debug)]
pub struct EtcdCluster {
    /// The members, in start order.
    pub members: Vec<Member>,
    dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts one member and waits until it serves.
    pub async fn single() -> Result<Self> {
        Self::start(1).await
    }

    /// Starts `n` members as one cluster and waits until every member serves.
    pub async fn start(n: usize) -> Result<Self> {
        Self::start_in(n, &std::env::temp_dir()).await
    }

    /// Like [`EtcdCluster::start`], with the members' data under `base` (benchmarks put it on
    /// the disk they measure).
    pub async fn start_in(n: usize, base: &Path) -> Result<Self> {
        let mut last = None;
        // A port picked as free can be taken before etcd binds it; retry on a fresh set.
        for _ in 0..3 {
            match Self::try_start(n, base).await {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("etcd did not start")))
    }

    async fn try_start(n: usize, base: &Path) -> Result<Self> {
        let binary = etcd_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("ringfence-etcd-")
            .tempdir_in(base)?;
        let mut members = Vec::new();
        for i in 0..n {
            members.push(Member {
                name: format!("m{i}"),
                client_port: free_port()?,
                peer_port: free_port()?,
                child: None,
                log: dir.path().join(format!("m{i}.log")),
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("ringfence-test-{}", std::process::id());
        for m in &mut members {
            m.child = Some(spawn_member(
                &binary,
                dir.path(),
                m,
                &initial_cluster,
                &token,
            )?);
        }
        let mut cluster = Self { members, dir };
        cluster.wait_healthy(Duration::from_secs(20)).await?;
        Ok(cluster)
    }

    /// Client endpoints of the members still running.
    pub fn endpoints(&mut self) -> Vec<String> {
        self.members
            .iter_mut()
            .filter_map(|m| m.is_running().then(|| m.endpoint()))
            .collect()
    }

    /// Client endpoints of every member, running or not.
    pub fn all_endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// `etcd://` URL of every member, for `--store`.
    pub fn store_url(&self) -> String {
        format!("etcd://{}", self.all_endpoints().join(","))
    }

    /// Kills member `i` with SIGKILL (by PID).
    pub fn kill(&mut self, i: usize) {
        if let Some(m) = self.members.get_mut(i) {
            m.kill();
        }
    }

    /// The index of the current leader, asking each running member.
    pub async fn leader(&mut self) -> Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for (i, m) in self.members.iter_mut().enumerate() {
                if !m.is_running() {
                    continue;
                }
                if let Ok(mut c) = connect(&m.endpoint()).await
                    && let Ok(status) = c.status().await
                {
                    let me = status.header().map(|h| h.member_id());
                    if status.leader() != 0 && Some(status.leader()) == me {
                        return Ok(i);
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("no etcd leader elected within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The directory holding the members' data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    async fn wait_healthy(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        for i in 0..self.members.len() {
            loop {
                let m = &mut self.members[i];
                if !m.is_running() {
                    bail!(
                        "etcd member {} exited during start:\n{}",
                        m.name,
                        m.log_tail()
                    );
                }
                if let Ok(mut c) = connect(&m.endpoint()).await
                    && c.get("/", None).await.is_ok()
                {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "etcd member {} did not serve within {limit:?}:\n{}",
                        m.name,
                        m.log_tail()
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
    }
}

fn spawn_member(
    binary: &Path,
    dir: &Path,
    m: &Member,
    initial_cluster: &str,
    token: &str,
) -> Result<Child> {
    let client = format!("http://127.0.0.1:{}", m.client_port);
    let peer = format!("http://127.0.0.1:{}", m.peer_port);
    let log = std::fs::File::create(&m.log)?;
    Command::new(binary)
        .arg("--name")
        .arg(&m.name)
        .arg("--data-dir")
        .arg(dir.join(&m.name))
        .args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args([
            "--initial-cluster",
            initial_cluster,
            "--initial-cluster-state",
            "new",
        ])
        .args(["--initial-cluster-token", token])
        // Fast elections keep failover tests short; loopback latency is microseconds.
        .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
        .args(["--logger", "zap", "--log-level", "warn"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))
}

async fn connect(endpoint: &str) -> Result<Client> {
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(300))
        .with_timeout(Duration::from_millis(800));
    Ok(Client::connect([format!("http://{endpoint}")], Some(options)).await?)
}
