//! The sandbox's network: its own namespace with loopback up and nothing else (`none`, the
//! default), or one veth pair to the host (`veth`) for the mesh proxy to reach it. The host
//! end is created by the supervisor with iproute2; the task configures its own end with
//! ioctls while it still holds `CAP_NET_ADMIN` in its namespace.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use serde::{Deserialize, Serialize};

/// Network mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Network {
    /// Loopback only.
    None,
    /// A veth pair: the task's end is `eth0` with `task/prefix` and a default route to `host`.
    Veth(Veth),
}

/// One veth pair's addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Veth {
    /// The host end's address (the task's gateway).
    pub host: Ipv4Addr,
    /// The task's address.
    pub task: Ipv4Addr,
    /// Prefix length of the link's subnet.
    pub prefix: u8,
}

/// The interface name inside the sandbox.
pub const INSIDE_IF: &str = "eth0";

/// Why a network spec is refused.
#[derive(Debug, thiserror::Error)]
#[error("--net {spec:?}: {why}")]
pub struct NetError {
    spec: String,
    why: String,
}

/// Parses `none` or `veth:ADDRESS/PREFIX` (the task's address; the host end takes the
/// subnet's first other usable address).
pub fn parse(spec: &str) -> Result<Network, NetError> {
    let err = |why: &str| NetError {
        spec: spec.to_owned(),
        why: why.to_owned(),
    };
    if spec == "none" {
        return Ok(Network::None);
    }
    let Some(rest) = spec.strip_prefix("veth:") else {
        return Err(err(
            "use none or veth:ADDRESS/PREFIX, e.g. veth:10.203.0.2/30",
        ));
    };
    let (addr, prefix) = rest
        .split_once('/')
        .ok_or_else(|| err("the address needs a prefix length, e.g. 10.203.0.2/30"))?;
    let task: Ipv4Addr = addr.parse().map_err(|_| err("not an IPv4 address"))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| (8..=30).contains(p))
        .ok_or_else(|| err("the prefix length must be between 8 and 30"))?;
    let mask = u32::MAX << (32 - u32::from(prefix));
    let net = u32::from(task) & mask;
    let broadcast = net | !mask;
    let t = u32::from(task);
    if t == net || t == broadcast {
        return Err(err(
            "the address is the subnet's network or broadcast address",
        ));
    }
    if task.is_loopback() || task.is_unspecified() || task.is_multicast() {
        return Err(err("not a unicast address for a link"));
    }
    let host = if t == net + 1 { net + 2 } else { net + 1 };
    Ok(Network::Veth(Veth {
        host: Ipv4Addr::from(host),
        task,
        prefix,
    }))
}

/// The host end's interface name for sandbox `id` (at most 15 bytes).
pub fn host_if_name(id: &str) -> String {
    let digest = ringfence_provenance::statement::Sha256::of(id.as_bytes());
    format!("rf{}", digest.hex().get(..12).unwrap_or("0"))
}

fn sockaddr(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; every bit pattern is valid for both.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: all-zero is a valid ifreq.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *dst = src as libc::c_char;
    }
    req
}

fn io(op: &str) -> std::io::Error {
    let e = std::io::Error::last_os_error();
    std::io::Error::new(e.kind(), format!("{op}: {e}"))
}

fn ioctl<T>(sock: &OwnedFd, req: libc::c_ulong, arg: &mut T, op: &str) -> std::io::Result<()> {
    // SAFETY: `arg` is the structure the request expects (ifreq or rtentry), valid for the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), req as _, arg as *mut T) };
    if rc < 0 { Err(io(op)) } else { Ok(()) }
}

fn set_up(sock: &OwnedFd, name: &str) -> std::io::Result<()> {
    let mut req = ifreq(name);
    ioctl(
        sock,
        libc::SIOCGIFFLAGS,
        &mut req,
        &format!("flags of {name}"),
    )?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    ioctl(
        sock,
        libc::SIOCSIFFLAGS,
        &mut req,
        &format!("bringing {name} up"),
    )
}

#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

/// Configures the calling process's network namespace: loopback up, and the veth end.
pub fn configure(net: &Network) -> std::io::Result<()> {
    // SAFETY: plain integer arguments; returns a new fd or -1.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io("socket"));
    }
    // SAFETY: a fresh descriptor owned from here on.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    set_up(&sock, "lo")?;
    let Network::Veth(v) = net else {
        return Ok(());
    };
    let mut req = ifreq(INSIDE_IF);
    req.ifr_ifru.ifru_addr = sockaddr(v.task);
    ioctl(&sock, libc::SIOCSIFADDR, &mut req, "address of eth0")?;
    let mask = u32::MAX << (32 - u32::from(v.prefix));
    let mut req = ifreq(INSIDE_IF);
    req.ifr_ifru.ifru_netmask = sockaddr(Ipv4Addr::from(mask));
    ioctl(&sock, libc::SIOCSIFNETMASK, &mut req, "netmask of eth0")?;
    set_up(&sock, INSIDE_IF)?;
    let mut route = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr(Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr(v.host),
        rt_genmask: sockaddr(Ipv4Addr::UNSPECIFIED),
        rt_flags: libc::RTF_UP | libc::RTF_GATEWAY,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: std::ptr::null_mut(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    ioctl(&sock, libc::SIOCADDRT, &mut route, "default route")
}

/// The host end of a sandbox's veth pair, deleted (with its peer) when dropped.
///
/// The kernel would remove the pair when the sandbox's network namespace goes, but it does so
/// asynchronously, after the sandbox has been reported ended; deleting it here means an ended
/// sandbox never leaves its link (and its address) behind on the host.
#[derive(Debug)]
pub struct HostLink(String);

impl Drop for HostLink {
    fn drop(&mut self) {
        // Already gone with the namespace is as good as deleted: the result is not needed.
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.0])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Creates the veth pair for the sandbox whose init is `pid`: the host end `host_if` with the
/// gateway address, the other end moved into the sandbox's network namespace as `eth0`.
pub fn create_veth(host_if: &str, pid: u32, v: &Veth) -> Result<HostLink, String> {
    let run = |args: &[&str]| -> Result<(), String> {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .map_err(|e| format!("ip (iproute2): {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    };
    let pid = pid.to_string();
    run(&[
        "link", "add", host_if, "type", "veth", "peer", "name", INSIDE_IF, "netns", &pid,
    ])?;
    let link = HostLink(host_if.to_owned());
    let addr = format!("{}/{}", v.host, v.prefix);
    run(&["addr", "add", &addr, "dev", host_if])?;
    run(&["link", "set", host_if, "up"])?;
    Ok(link)
}

// A network namespace made late: with `--net none` the init makes the namespace only after it
// has forked the task, and passes it over a socket pair; the task enters it after pivoting.
// Making a network namespace costs about half a millisecond of CPU, and the task's pivot waits
// about as long for an RCU grace period with the CPU idle: done side by side, the sandbox
// starts that much sooner. A veth needs the namespace before the task runs (the supervisor
// moves the task's end into it), so it keeps the namespace from the start.

/// `PIDFD_GET_NET_NAMESPACE` (`_IO(0xFF, 4)`, Linux 6.11): a pidfd's network namespace as an fd.
const PIDFD_GET_NET_NAMESPACE: libc::c_ulong = 0xFF04;

/// Whether this kernel hands out a process's network namespace through its pidfd (checked on
/// this process once; older kernels keep the namespace from the start).
pub(crate) fn late_netns_supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        crate::sys::pidfd_open(std::process::id()).is_ok_and(|pidfd| netns_of(&pidfd).is_ok())
    })
}

fn netns_of(pidfd: &OwnedFd) -> std::io::Result<OwnedFd> {
    // SAFETY: an ioctl without an argument on an open pidfd; returns a new fd or -1.
    let ns = unsafe { libc::ioctl(pidfd.as_raw_fd(), PIDFD_GET_NET_NAMESPACE, 0) };
    if ns < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned from here on.
    Ok(unsafe { OwnedFd::from_raw_fd(ns) })
}

/// A connected pair of Unix sockets (close-on-exec) for handing the namespace over.
pub(crate) fn socket_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a writable array of two ints.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: two fresh descriptors owned from here on.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Room for one control message carrying one descriptor (`CMSG_SPACE(4)` is 24 bytes),
/// 8-aligned as a `cmsghdr` must be.
type FdSpace = [u64; 4];

/// `CMSG_LEN` of one descriptor.
fn fd_cmsg_len() -> usize {
    // SAFETY: CMSG_LEN is a pure size computation.
    unsafe { libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as usize }
}

/// A message of the one byte at `iov` with `space` as its control buffer.
fn fd_msghdr(iov: &mut libc::iovec, space: &mut FdSpace) -> libc::msghdr {
    // SAFETY: all-zero (null pointers, zero lengths) is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = space.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is a pure size computation.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) } as usize;
    msg
}

/// In the init, once the task is forked: makes a new network namespace (owned by the
/// sandbox's user namespace, which the init is root of) and sends it to the task over `sock`.
pub(crate) fn send_new_netns(sock: &OwnedFd, self_pidfd: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: plain integer argument; the init is single-threaded.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io("unshare(CLONE_NEWNET)"));
    }
    let ns = netns_of(self_pidfd)?;
    let fd = ns.as_raw_fd();
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut space: FdSpace = [0; 4];
    let msg = fd_msghdr(&mut iov, &mut space);
    // SAFETY: `msg` points at `iov` and `space`, which outlive the sendmsg; `space` (32
    // bytes) holds CMSG_SPACE(4) (24), so the header and the int written through
    // CMSG_FIRSTHDR/CMSG_DATA stay in it.
    let sent = unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = fd_cmsg_len();
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>(), fd);
        libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
    };
    if sent != 1 {
        return Err(io("sending the network namespace"));
    }
    Ok(())
}

/// In the task: receives the network namespace the init sends on `sock` and enters it. An
/// init that failed sends nothing and closes its end: that is an error, never a task left in
/// the host's network.
pub(crate) fn join_netns_from(sock: i32) -> std::io::Result<()> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut space: FdSpace = [0; 4];
    let mut msg = fd_msghdr(&mut iov, &mut space);
    // SAFETY: `msg` points at `iov` and `space`, both live for the call; the kernel writes at
    // most `msg_controllen` bytes of control data into `space`.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io("receiving the network namespace"));
    }
    // SAFETY: `msg` was filled by recvmsg; CMSG_FIRSTHDR checks msg_controllen and returns
    // null when there is no control message.
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    // SAFETY: a non-null `cmsg` points inside `space`, which is still alive.
    let fd = unsafe {
        if n != 1
            || cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
            || (*cmsg).cmsg_len != fd_cmsg_len()
        {
            None
        } else {
            Some(std::ptr::read_unaligned(
                libc::CMSG_DATA(cmsg).cast::<i32>(),
            ))
        }
    };
    let Some(fd) = fd else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the init sent no network namespace",
        ));
    };
    // SAFETY: SCM_RIGHTS installed a fresh descriptor in this process, owned from here on.
    let ns = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: plain integer arguments; setns only reads the fd.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io("entering the network namespace"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_the_host_takes_the_other_address() {
        assert_eq!(parse("none").ok(), Some(Network::None));
        let Ok(Network::Veth(v)) = parse("veth:10.203.0.2/30") else {
            unreachable!()
        };
        assert_eq!(v.host, Ipv4Addr::new(10, 203, 0, 1));
        let Ok(Network::Veth(v)) = parse("veth:10.203.0.1/30") else {
            unreachable!()
        };
        assert_eq!(v.host, Ipv4Addr::new(10, 203, 0, 2));
        let e = |s| parse(s).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(
            e("bridge"),
            "--net \"bridge\": use none or veth:ADDRESS/PREFIX, e.g. veth:10.203.0.2/30"
        );
        assert!(e("veth:10.203.0.0/30").contains("network or broadcast"));
        assert!(e("veth:10.203.0.3/30").contains("network or broadcast"));
        assert!(e("veth:10.203.0.2/31").contains("between 8 and 30"));
        assert!(e("veth:10.203.0.2").contains("prefix length"));
        assert!(e("veth:127.0.0.2/30").contains("not a unicast address"));
    }

    #[test]
    fn host_interface_names_fit_the_kernel_limit() {
        let n = host_if_name("sbx-123-456789");
        assert!(n.len() <= 15 && n.starts_with("rf"), "{n}");
        assert_ne!(n, host_if_name("sbx-123-456790"));
    }
}
