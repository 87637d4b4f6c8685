//! The mesh proxy pair beside a pair of nginx proxies doing the same mTLS, with the same nginx
//! backend, in one run: client → outbound proxy → mTLS (TLS 1.3, client certificates) →
//! inbound proxy → backend, and the client straight to the backend.
//!
//! For each path: latency at a fixed 1,000 requests/s (open loop, measured from each
//! request's scheduled send time, so a stall is not hidden), POST with a 1 KB body and a 1 KB
//! answer; CPU and RSS of the two proxies over that phase; then the most requests/s `wrk`
//! gets through, and requests per CPU-second the two proxies spent (requests/s per core).
//!
//! The Ringfence pair does more per request than the nginx pair: the Cedar decision, the
//! normalizer, the SPIFFE ID checks on both sides. nginx checks the chain and a DNS name (it
//! cannot check a URI SAN), so the certificates here carry both.
//!
//! Needs `nginx` and `wrk` (Debian: nginx-light, wrk) and a release `ringfence` beside this
//! binary (cargo build --release -p ringfence-cli -p ringfence-bench).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType,
};
use ringfence_test_util::free_port;
use ringfence_test_util::process::{Proc, wait_for};
use serde_json::json;

const RATE: u64 = 1_000;
const CONNECTIONS: u64 = 8;

struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Result<Self> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct names: OpenSSL takes a leaf whose issuer equals its subject for self-signed.
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "ringfence bench CA");
        let cert = p.self_signed(&key)?;
        Ok(Self {
            ca_pem: cert.pem(),
            issuer: Issuer::new(p, key),
        })
    }

    /// (certificate PEM, key PEM) with a SPIFFE URI SAN and a DNS SAN.
    fn leaf(&self, uri: &str, dns: &str) -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(vec![dns.to_owned()])?;
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, dns);
        p.subject_alt_names
            .push(SanType::URI(uri.try_into().context("uri")?));
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

fn write_svid(dir: &Path, ca: &str, leaf: &(String, String)) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let svid = dir.join("svid.pem");
    std::fs::write(&svid, format!("{}{}", leaf.0, leaf.1))?;
    std::fs::set_permissions(&svid, std::fs::Permissions::from_mode(0o600))?;
    std::fs::write(dir.join("bundle.pem"), ca)?;
    std::fs::write(dir.join("cert.pem"), &leaf.0)?;
    std::fs::write(dir.join("key.pem"), &leaf.1)?;
    std::fs::set_permissions(dir.join("key.pem"), std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

fn nginx(dir: &Path, name: &str, body: &str) -> Result<Proc> {
    let conf = dir.join(format!("{name}.conf"));
    std::fs::create_dir_all(dir.join(format!("{name}-tmp")))?;
    let tmp = dir.join(format!("{name}-tmp"));
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\nerror_log {err} warn;\npid {pid};\nevents {{ worker_connections 1024; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {t}/body;\n  proxy_temp_path {t}/proxy;\n  fastcgi_temp_path {t}/fcgi;\n  uwsgi_temp_path {t}/uwsgi;\n  scgi_temp_path {t}/scgi;\n  keepalive_requests 100000;\n{body}\n}}\n",
            err = dir.join(format!("{name}.err")).display(),
            pid = dir.join(format!("{name}.pid")).display(),
            t = tmp.display(),
        ),
    )?;
    let mut cmd = Command::new("nginx");
    cmd.arg("-c").arg(&conf).arg("-p").arg(dir);
    Ok(Proc::spawn(name, dir, &mut cmd))
}

fn wait_port(port: u16, what: &str) {
    wait_for(Duration::from_secs(10), what, || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .map(|_| ())
    });
}

/// utime + stime of `pid`, seconds.
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime is field 14, stime 15 (1-based, counting pid and comm): here 11 and 12.
    (ticks(11) + ticks(12)) / 100.0
}

/// Resident set of `pid`, MB.
fn rss_mb(pid: i32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(f64::NAN)
}

/// Reads one response (Content-Length framed) from a blocking stream; returns its status.
fn read_response(tcp: &mut std::net::TcpStream, buf: &mut Vec<u8>) -> Result<u16> {
    use std::io::Read;
    buf.clear();
    let mut chunk = [0u8; 16 * 1024];
    let (head_end, length) = loop {
        let n = tcp.read(&mut chunk)?;
        if n == 0 {
            bail!("the connection closed mid-response");
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head =
                String::from_utf8_lossy(buf.get(..i).unwrap_or_default()).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .with_context(|| format!("no content-length in {head}"))?;
            break (i + 4, length);
        }
    };
    while buf.len() < head_end + length {
        let n = tcp.read(&mut chunk)?;
        if n == 0 {
            bail!("the connection closed mid-body");
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
    let status = std::str::from_utf8(buf.get(9..12).unwrap_or_default())
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(status)
}

/// Open-loop load at `RATE` requests/s for `seconds`; latencies in ms, sorted.
///
/// One thread per connection with blocking sockets, each sleeping to its requests' scheduled
/// times (`std::thread::sleep`, microsecond timers; an async runtime's millisecond timer would
/// add up to a millisecond to every sample). Latency is measured from the scheduled time, so a
/// stall delays and counts against every request behind it.
fn fixed_rate(addr: SocketAddr, seconds: f64) -> Result<(Vec<f64>, usize)> {
    use std::io::Write;
    let total = (RATE as f64 * seconds) as u64;
    let per_conn = total / CONNECTIONS;
    let interval = Duration::from_micros(1_000_000 * CONNECTIONS / RATE);
    let body = "a".repeat(1024);
    let request = format!(
        "POST /bench HTTP/1.1\r\nHost: orders.shop\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let start = Instant::now() + Duration::from_millis(50);
    let threads: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let request = request.clone();
            std::thread::spawn(move || -> Result<(Vec<f64>, usize)> {
                let mut tcp = std::net::TcpStream::connect(addr)?;
                tcp.set_nodelay(true)?;
                tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
                let mut lat = Vec::with_capacity(usize::try_from(per_conn).unwrap_or(0));
                let mut errors = 0usize;
                let mut buf = Vec::with_capacity(4096);
                // Spread the connections' schedules across one interval.
                let offset = interval * u32::try_from(c).unwrap_or(0)
                    / u32::try_from(CONNECTIONS).unwrap_or(1);
                for i in 0..per_conn {
                    let due = start + offset + interval * u32::try_from(i).unwrap_or(u32::MAX);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    tcp.write_all(request.as_bytes())?;
                    if read_response(&mut tcp, &mut buf)? != 200 {
                        errors += 1;
                    }
                    lat.push(due.elapsed().as_secs_f64() * 1000.0);
                }
                Ok((lat, errors))
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in threads {
        let (l, e) = t
            .join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
        all.extend(l);
        errors += e;
    }
    all.sort_by(f64::total_cmp);
    Ok((all, errors))
}

/// wrk's requests/s against `port` for `seconds`.
fn wrk(dir: &Path, port: u16, seconds: u64) -> Result<f64> {
    let script = dir.join("post.lua");
    std::fs::write(
        &script,
        "wrk.method = \"POST\"\nwrk.body = string.rep(\"a\", 1024)\nwrk.headers[\"Host\"] = \"orders.shop\"\nwrk.headers[\"Content-Type\"] = \"text/plain\"\n",
    )?;
    let out = Command::new("wrk")
        .args(["-t1", "-c32", &format!("-d{seconds}s"), "-s"])
        .arg(&script)
        .arg(format!("http://127.0.0.1:{port}/bench"))
        .output()
        .context("wrk (Debian: wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Non-2xx") {
        let sample = Command::new("curl")
            .args([
                "-s",
                "-i",
                "-X",
                "POST",
                "-H",
                "Host: orders.shop",
                "--data",
                "x",
            ])
            .arg(format!("http://127.0.0.1:{port}/bench"))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let mut logs = String::new();
        for e in std::fs::read_dir(dir)?.flatten() {
            if e.path().extension().is_some_and(|x| x == "err") {
                let t = std::fs::read_to_string(e.path()).unwrap_or_default();
                let tail: Vec<&str> = t.lines().rev().take(3).collect();
                logs.push_str(&format!("{}: {}\n", e.path().display(), tail.join(" | ")));
            }
        }
        bail!("wrk saw errors: {text}\none such answer: {sample}\nnginx logs:\n{logs}");
    }
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output: {text}"))
}

struct Figures {
    p50: f64,
    p99: f64,
    errors: usize,
    cpu_pct: f64,
    rss_mb: Vec<f64>,
    max_rps: f64,
    per_core: f64,
}

async fn measure(dir: &Path, port: u16, pids: &[i32], seconds: f64) -> Result<Figures> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    // Warm up connections and caches.
    let _ = tokio::task::spawn_blocking(move || fixed_rate(addr, 1.0)).await??;
    let cpu0: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
    let t0 = Instant::now();
    let (lat, errors) = tokio::task::spawn_blocking(move || fixed_rate(addr, seconds)).await??;
    let cpu_pct = (pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>() - cpu0)
        / t0.elapsed().as_secs_f64()
        * 100.0;
    let rss_mb = pids.iter().map(|p| rss_mb(*p)).collect();
    let cpu1: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
    let wrk_seconds = 5;
    let max_rps = {
        let d = dir.to_owned();
        tokio::task::spawn_blocking(move || wrk(&d, port, wrk_seconds)).await??
    };
    let cpu = pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>() - cpu1;
    let per_core = if pids.is_empty() || cpu <= 0.0 {
        f64::NAN
    } else {
        max_rps * wrk_seconds as f64 / cpu
    };
    Ok(Figures {
        p50: percentile(&lat, 0.50),
        p99: percentile(&lat, 0.99),
        errors,
        cpu_pct,
        rss_mb,
        max_rps,
        per_core,
    })
}

pub async fn run(seconds: f64) -> Result<()> {
    for tool in ["nginx", "wrk"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            bail!("{tool} is missing (Debian: apt-get install -y nginx-light wrk)");
        }
    }
    let ringfence = crate::sandbox::sibling("ringfence")?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    println!("mesh: working in {} (kept while it runs)", dir.display());
    let pki = Pki::new()?;
    let web = pki.leaf("spiffe://bench.test/ns/shop/svc/web", "web.shop")?;
    let orders = pki.leaf("spiffe://bench.test/ns/shop/svc/orders", "orders.shop")?;
    write_svid(&dir.join("web"), &pki.ca_pem, &web)?;
    write_svid(&dir.join("orders"), &pki.ca_pem, &orders)?;
    let ca = dir.join("web").join("bundle.pem");

    // The backend: nginx answering every request with 1 KB.
    let backend = free_port()?;
    let kb = "b".repeat(1024);
    let _backend = nginx(
        dir,
        "backend",
        &format!(
            "  server {{ listen 127.0.0.1:{backend}; location / {{ client_body_buffer_size 16k; return 200 \"{kb}\"; }} }}"
        ),
    )?;
    wait_port(backend, "the backend");

    // The Ringfence pair.
    let (rf_in, rf_out) = (free_port()?, free_port()?);
    std::fs::write(
        dir.join("access.cedar"),
        "permit(principal == Workload::\"spiffe://bench.test/ns/shop/svc/web\", action == Action::\"POST\", resource == Service::\"orders.shop\") when { context.path == \"/bench\" };\n",
    )?;
    std::fs::write(
        dir.join("orders.toml"),
        format!(
            "[identity]\nsvid_dir = \"orders\"\n[inbound]\nlisten = \"127.0.0.1:{rf_in}\"\nforward = \"127.0.0.1:{backend}\"\n[policy]\nfile = \"access.cedar\"\n"
        ),
    )?;
    std::fs::write(
        dir.join("web.toml"),
        format!(
            "[identity]\nsvid_dir = \"web\"\n[outbound]\nlisten = \"127.0.0.1:{rf_out}\"\n[endpoints]\n\"orders.shop\" = [\"127.0.0.1:{rf_in}\"]\n"
        ),
    )?;
    let rf_orders = Proc::spawn(
        "ringfence-orders",
        dir,
        Command::new(&ringfence)
            .arg("mesh")
            .arg(dir.join("orders.toml")),
    );
    let rf_web = Proc::spawn(
        "ringfence-web",
        dir,
        Command::new(&ringfence)
            .arg("mesh")
            .arg(dir.join("web.toml")),
    );
    wait_port(rf_in, "ringfence inbound");
    wait_port(rf_out, "ringfence outbound");

    // The nginx pair, TLS 1.3 with client certificates both ways, keep-alive upstreams.
    let (ng_in, ng_out) = (free_port()?, free_port()?);
    let od = dir.join("orders");
    let wd = dir.join("web");
    let ng_orders = nginx(
        dir,
        "nginx-orders",
        &format!(
            "  upstream app {{ server 127.0.0.1:{backend}; keepalive 64; }}\n  server {{\n    listen 127.0.0.1:{ng_in} ssl;\n    ssl_protocols TLSv1.3;\n    ssl_certificate {oc};\n    ssl_certificate_key {ok};\n    ssl_client_certificate {ca};\n    ssl_verify_client on;\n    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n  }}",
            oc = od.join("cert.pem").display(),
            ok = od.join("key.pem").display(),
            ca = ca.display(),
        ),
    )?;
    let ng_web = nginx(
        dir,
        "nginx-web",
        &format!(
            "  upstream orders {{ server 127.0.0.1:{ng_in}; keepalive 64; }}\n  server {{\n    listen 127.0.0.1:{ng_out};\n    location / {{\n      proxy_pass https://orders;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_ssl_protocols TLSv1.3;\n      proxy_ssl_certificate {wc};\n      proxy_ssl_certificate_key {wk};\n      proxy_ssl_trusted_certificate {ca};\n      proxy_ssl_verify on;\n      proxy_ssl_name orders.shop;\n      proxy_ssl_server_name on;\n      proxy_ssl_session_reuse on;\n    }}\n  }}",
            wc = wd.join("cert.pem").display(),
            wk = wd.join("key.pem").display(),
            ca = ca.display(),
        ),
    )?;
    wait_port(ng_in, "nginx inbound");
    wait_port(ng_out, "nginx outbound");

    println!(
        "mesh: POST 1 KB / answer 1 KB, {RATE} requests/s open loop over {CONNECTIONS} connections for {seconds} s, then wrk -t1 -c32 for 5 s"
    );
    let direct = measure(dir, backend, &[], seconds).await?;
    let rf = measure(dir, rf_out, &[rf_web.pid(), rf_orders.pid()], seconds).await?;
    let ng = measure(dir, ng_out, &[ng_web.pid(), ng_orders.pid()], seconds).await?;
    for (name, f) in [
        ("direct", &direct),
        ("ringfence pair", &rf),
        ("nginx pair", &ng),
    ] {
        println!(
            "  {name:<15} p50 {:.3} ms  p99 {:.3} ms  errors {}  proxies' CPU {:.1}%  RSS {}  max {:.0} req/s  per proxy core {:.0} req/s",
            f.p50,
            f.p99,
            f.errors,
            f.cpu_pct,
            f.rss_mb
                .iter()
                .map(|m| format!("{m:.1} MB"))
                .collect::<Vec<_>>()
                .join(" + "),
            f.max_rps,
            f.per_core
        );
    }
    let added = |f: &Figures| (f.p50 - direct.p50, f.p99 - direct.p99);
    let (rf50, rf99) = added(&rf);
    let (ng50, ng99) = added(&ng);
    let ratio = rf.per_core / ng.per_core;
    let max_rss = rf.rss_mb.iter().copied().fold(0.0, f64::max);
    println!("  added by the ringfence pair: p50 {rf50:.3} ms, p99 {rf99:.3} ms");
    println!("  added by the nginx pair:     p50 {ng50:.3} ms, p99 {ng99:.3} ms");
    println!("  requests per proxy core, ringfence / nginx: {ratio:.2}x");
    let goals = [
        ("added p99 <= 0.3 ms at 1,000 rps", rf99 <= 0.3),
        (">= 1.5x the nginx pair's requests per core", ratio >= 1.5),
        ("<= 20 MB RSS per proxy", max_rss <= 20.0),
    ];
    for (g, met) in goals {
        println!("  goal {g}: {}", if met { "met" } else { "NOT met" });
    }
    println!(
        "{}",
        json!({
            "bench": "mesh",
            "direct": {"p50_ms": direct.p50, "p99_ms": direct.p99, "max_rps": direct.max_rps},
            "ringfence": {"p50_ms": rf.p50, "p99_ms": rf.p99, "added_p99_ms": rf99, "cpu_pct_at_1000rps": rf.cpu_pct, "rss_mb": rf.rss_mb, "max_rps": rf.max_rps, "rps_per_core": rf.per_core, "errors": rf.errors},
            "nginx": {"p50_ms": ng.p50, "p99_ms": ng.p99, "added_p99_ms": ng99, "cpu_pct_at_1000rps": ng.cpu_pct, "rss_mb": ng.rss_mb, "max_rps": ng.max_rps, "rps_per_core": ng.per_core, "errors": ng.errors},
            "per_core_ratio": ratio,
            "goals": goals.iter().map(|(g, m)| ((*g).to_owned(), json!(m))).collect::<serde_json::Map<_, _>>(),
        })
    );
    drop((rf_web, rf_orders, ng_web, ng_orders));
    Ok(())
}
