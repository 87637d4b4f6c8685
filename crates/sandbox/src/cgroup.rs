//! Resource limits through cgroupfs, written by hand: v1 (one hierarchy per controller, as on
//! this project's kernels) or v2 (the unified hierarchy), detected at run time. A v2 mount is
//! used only when it has the memory and pids controllers; otherwise the v1 controllers are.

use std::path::{Path, PathBuf};

/// Limits for one sandbox.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// Memory in bytes.
    pub memory: Option<u64>,
    /// Most tasks (processes and threads).
    pub pids: Option<u64>,
    /// CPU in cores (0.5 = half a core).
    pub cpu: Option<f64>,
}

/// Why limits cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A cgroup file could not be written or read.
    #[error("cgroup {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// No hierarchy offers a controller a limit needs.
    #[error(
        "no cgroup hierarchy offers the {0} controller under {1}; mount it, or run without --{0}"
    )]
    NoController(&'static str, PathBuf),
    /// A value could not be parsed.
    #[error("{0}")]
    Parse(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Parses a memory size: bytes, or with a `K`, `M`, `G` suffix (powers of 1024).
pub fn parse_memory(s: &str) -> Result<u64, CgroupError> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => {
                    return Err(CgroupError::Parse(format!(
                        "memory {s:?}: unknown suffix {c:?}; use K, M or G"
                    )));
                }
            };
            (t.get(..i).unwrap_or_default(), m)
        }
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| CgroupError::Parse(format!("memory {s:?}: not a size like 256M")))?;
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| CgroupError::Parse(format!("memory {s:?}: too large")))?;
    if bytes < 1 << 20 {
        return Err(CgroupError::Parse(format!(
            "memory {s:?}: below 1M, nothing could start"
        )));
    }
    Ok(bytes)
}

/// Parses a CPU share in cores (`0.5`, `2`).
pub fn parse_cpu(s: &str) -> Result<f64, CgroupError> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| CgroupError::Parse(format!("cpu {s:?}: not a number of cores like 0.5")))?;
    if !(0.01..=1024.0).contains(&v) {
        return Err(CgroupError::Parse(format!(
            "cpu {s:?}: must be between 0.01 and 1024 cores"
        )));
    }
    Ok(v)
}

const CPU_PERIOD_US: u64 = 100_000;

/// Which cgroup layout a machine has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// One directory per controller under the root (`<root>/memory`, `<root>/pids`, ...).
    V1,
    /// The unified hierarchy at the root, with these controllers enabled.
    V2,
}

/// Detects the layout under `root` (normally `/sys/fs/cgroup`).
pub fn detect(root: &Path) -> Layout {
    let controllers = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    let names: Vec<&str> = controllers.split_whitespace().collect();
    if names.contains(&"memory") && names.contains(&"pids") {
        Layout::V2
    } else {
        Layout::V1
    }
}

/// A sandbox's cgroup(s), removed on drop.
#[derive(Debug)]
pub struct Cgroup {
    layout: Layout,
    /// The directories created, one per v1 controller or one for v2.
    dirs: Vec<(&'static str, PathBuf)>,
}

impl Cgroup {
    /// Creates `ringfence/<name>` under `root` for the controllers `limits` needs (always
    /// pids and memory, so usage and OOM kills are observed even without limits) and writes
    /// the limits.
    pub fn create(root: &Path, name: &str, limits: Limits) -> Result<Cgroup, CgroupError> {
        let layout = detect(root);
        let mut cg = Cgroup {
            layout: layout.clone(),
            dirs: Vec::new(),
        };
        match layout {
            Layout::V2 => {
                let parent = root.join("ringfence");
                mkdir(&parent)?;
                // Children of `ringfence` may use the controllers.
                let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+memory +pids +cpu");
                let dir = parent.join(name);
                mkdir(&dir)?;
                cg.dirs.push(("unified", dir.clone()));
                if let Some(m) = limits.memory {
                    write(&dir, "memory.max", &m.to_string())?;
                    let _ = std::fs::write(dir.join("memory.swap.max"), "0");
                }
                if let Some(p) = limits.pids {
                    write(&dir, "pids.max", &p.to_string())?;
                }
                if let Some(c) = limits.cpu {
                    let quota = (c * CPU_PERIOD_US as f64).round() as u64;
                    write(&dir, "cpu.max", &format!("{quota} {CPU_PERIOD_US}"))?;
                }
            }
            Layout::V1 => {
                let mut controllers = vec!["memory", "pids"];
                if limits.cpu.is_some() {
                    controllers.push("cpu");
                }
                for c in controllers {
                    let base = root.join(c);
                    if !base.join("cgroup.procs").exists() {
                        let needed = match c {
                            "memory" => limits.memory.is_some(),
                            "pids" => limits.pids.is_some(),
                            _ => true,
                        };
                        if needed {
                            return Err(CgroupError::NoController(c, root.to_owned()));
                        }
                        continue;
                    }
                    let parent = base.join("ringfence");
                    mkdir(&parent)?;
                    let dir = parent.join(name);
                    mkdir(&dir)?;
                    cg.dirs.push((c, dir));
                }
                for (c, dir) in &cg.dirs {
                    match *c {
                        "memory" => {
                            if let Some(m) = limits.memory {
                                write(dir, "memory.limit_in_bytes", &m.to_string())?;
                                // Without swap accounting this file is absent; there is no
                                // swap to escape to then either.
                                if dir.join("memory.memsw.limit_in_bytes").exists() {
                                    write(dir, "memory.memsw.limit_in_bytes", &m.to_string())?;
                                }
                            }
                        }
                        "pids" => {
                            if let Some(p) = limits.pids {
                                write(dir, "pids.max", &p.to_string())?;
                            }
                        }
                        "cpu" => {
                            if let Some(c) = limits.cpu {
                                let quota = (c * CPU_PERIOD_US as f64).round() as u64;
                                write(dir, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
                                write(dir, "cpu.cfs_quota_us", &quota.to_string())?;
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(cg)
    }

    /// The layout in use.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The files a single-threaded process writes `0` to, to move itself into the cgroup(s)
    /// without the kernel's global lock: v1's `tasks` files. Writing a pid to `cgroup.procs`
    /// takes the cgroup threadgroup lock for writing, which waits for an RCU grace period (a
    /// few milliseconds at HZ=250); a thread moving only itself skips that lock. `None` on v2,
    /// where a domain cgroup has no per-thread file and [`Cgroup::add`] is the way in.
    pub fn self_join_files(&self) -> Option<Vec<PathBuf>> {
        match self.layout {
            Layout::V1 => Some(self.dirs.iter().map(|(_, d)| d.join("tasks")).collect()),
            Layout::V2 => None,
        }
    }

    /// Moves process `pid` into the cgroup(s).
    pub fn add(&self, pid: u32) -> Result<(), CgroupError> {
        for (_, dir) in &self.dirs {
            write(dir, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// How many times the kernel's OOM killer killed a task in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let (file, key) = match self.layout {
            Layout::V2 => ("memory.events", "oom_kill"),
            Layout::V1 => ("memory.oom_control", "oom_kill"),
        };
        self.dirs
            .iter()
            .filter(|(c, _)| *c == "memory" || *c == "unified")
            .filter_map(|(_, d)| std::fs::read_to_string(d.join(file)).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(|l| {
                        let mut it = l.split_whitespace();
                        (it.next() == Some(key)).then(|| it.next()?.parse::<u64>().ok())?
                    })
                    .collect::<Vec<_>>()
            })
            .sum()
    }

    /// How many times a fork was refused by the pids limit (v1 and v2: `pids.events max`).
    pub fn pids_refused(&self) -> u64 {
        self.dirs
            .iter()
            .filter(|(c, _)| *c == "pids" || *c == "unified")
            .filter_map(|(_, d)| std::fs::read_to_string(d.join("pids.events")).ok())
            .flat_map(|t| {
                t.lines()
                    .filter_map(|l| l.strip_prefix("max ")?.trim().parse::<u64>().ok())
                    .collect::<Vec<_>>()
            })
            .sum()
    }

    /// Peak memory use in bytes, where the kernel reports it.
    pub fn memory_peak(&self) -> Option<u64> {
        let file = match self.layout {
            Layout::V2 => "memory.peak",
            Layout::V1 => "memory.max_usage_in_bytes",
        };
        self.dirs
            .iter()
            .filter(|(c, _)| *c == "memory" || *c == "unified")
            .find_map(|(_, d)| {
                std::fs::read_to_string(d.join(file))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            })
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for (_, dir) in &self.dirs {
            // Fails while processes remain; the sandbox has exited by the time this runs.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn mkdir(dir: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io(dir)(e)),
    }
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    std::fs::write(&path, value).map_err(io(&path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_v1(root: &Path) {
        for c in ["memory", "pids", "cpu"] {
            std::fs::create_dir_all(root.join(c)).ok();
            std::fs::write(root.join(c).join("cgroup.procs"), "").ok();
        }
    }

    #[test]
    fn sizes_and_cpu_parse_with_clear_errors() {
        assert_eq!(parse_memory("256M").ok(), Some(256 << 20));
        assert_eq!(parse_memory("1g").ok(), Some(1 << 30));
        assert_eq!(parse_memory("2097152").ok(), Some(2 << 20));
        let e = |s| parse_memory(s).err().map(|e| e.to_string());
        assert_eq!(
            e("12Q").as_deref(),
            Some("memory \"12Q\": unknown suffix 'Q'; use K, M or G")
        );
        assert_eq!(
            e("10K").as_deref(),
            Some("memory \"10K\": below 1M, nothing could start")
        );
        assert!(e("99999999999999G").is_some());
        assert_eq!(parse_cpu("0.5").ok(), Some(0.5));
        assert!(parse_cpu("0").is_err());
        assert!(parse_cpu("lots").is_err());
    }

    #[test]
    fn v1_limits_are_written_per_controller() {
        let t = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        fake_v1(t.path());
        let limits = Limits {
            memory: Some(64 << 20),
            pids: Some(32),
            cpu: Some(0.5),
        };
        let cg = Cgroup::create(t.path(), "job1", limits).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(cg.layout(), &Layout::V1);
        let read = |p: &str| std::fs::read_to_string(t.path().join(p)).unwrap_or_default();
        assert_eq!(
            read("memory/ringfence/job1/memory.limit_in_bytes"),
            "67108864"
        );
        assert_eq!(read("pids/ringfence/job1/pids.max"), "32");
        assert_eq!(read("cpu/ringfence/job1/cpu.cfs_quota_us"), "50000");
        assert_eq!(read("cpu/ringfence/job1/cpu.cfs_period_us"), "100000");
        cg.add(42).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(read("pids/ringfence/job1/cgroup.procs"), "42");
        let joins = cg.self_join_files().unwrap_or_default();
        assert_eq!(joins.len(), 3, "{joins:?}");
        for c in ["memory", "pids", "cpu"] {
            assert!(
                joins.contains(&t.path().join(c).join("ringfence/job1/tasks")),
                "{c}: {joins:?}"
            );
        }
        std::fs::write(
            t.path().join("memory/ringfence/job1/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .ok();
        assert_eq!(cg.oom_kills(), 2);
    }

    #[test]
    fn v2_is_used_when_it_has_memory_and_pids() {
        let t = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        std::fs::write(t.path().join("cgroup.controllers"), "cpu memory pids\n").ok();
        let limits = Limits {
            memory: Some(128 << 20),
            pids: Some(64),
            cpu: Some(1.5),
        };
        let cg = Cgroup::create(t.path(), "j", limits).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(cg.layout(), &Layout::V2);
        let read = |p: &str| std::fs::read_to_string(t.path().join(p)).unwrap_or_default();
        assert_eq!(read("ringfence/j/memory.max"), "134217728");
        assert_eq!(read("ringfence/j/pids.max"), "64");
        assert_eq!(read("ringfence/j/cpu.max"), "150000 100000");
        assert_eq!(cg.self_join_files(), None, "v2 has no per-thread file");
        std::fs::write(
            t.path().join("ringfence/j/memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .ok();
        assert_eq!(cg.oom_kills(), 1);
    }

    #[test]
    fn v2_without_memory_falls_back_to_v1_and_a_missing_controller_is_named() {
        let t = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        std::fs::write(t.path().join("cgroup.controllers"), "cpu io\n").ok();
        assert_eq!(detect(t.path()), Layout::V1);
        let e = Cgroup::create(
            t.path(),
            "j",
            Limits {
                pids: Some(4),
                ..Limits::default()
            },
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            e.starts_with("no cgroup hierarchy offers the memory controller") || e.contains("pids"),
            "{e}"
        );
    }
}
