//! Endpoints from the control plane's discovery service.
//!
//! The first call for a service opens a `Discovery.WatchEndpoints` stream to the control plane
//! (mTLS with the proxy's own SVID; the server must be `spiffe://<td>/ringfence/controlplane`)
//! and keeps it open: every change the control plane sends replaces the service's endpoint
//! list, so a connection opened after a task starts or stops uses the new list. Each endpoint
//! is the task's machine address and its job's port of the configured name (`mesh` unless
//! configured otherwise): the port of the inbound proxy beside the task.
//!
//! An endpoint is where to connect, never whom to trust: the outbound side still checks that
//! the server it reaches holds the SPIFFE ID of the service it asked for, so a wrong or stale
//! list can send a call nowhere but can never send it to the wrong workload. That is why a
//! broken stream keeps the last list it had while it reconnects.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringfence_api::pb;
use ringfence_api::pb::discovery_client::DiscoveryClient;
use ringfence_policy::ServiceName;
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::proxy::Resolver;

/// What a watch knows: nothing yet, the last list, or why it has none.
#[derive(Debug, Clone)]
enum Known {
    Waiting,
    Endpoints(Arc<[SocketAddr]>),
    Failed(String),
}

/// How the resolver behaves.
#[derive(Debug, Clone)]
pub struct DiscoveryOptions {
    /// The job port whose number is the endpoint's inbound proxy port.
    pub port_name: String,
    /// How long a first request for a service waits for its first list.
    pub first_wait: Duration,
    /// At most this many services are watched (each is a stream to the control plane; the
    /// names come from the local workload's requests).
    pub max_services: usize,
    /// The longest wait between reconnection attempts.
    pub max_backoff: Duration,
}

impl Default for DiscoveryOptions {
    fn default() -> Self {
        Self {
            port_name: "mesh".into(),
            first_wait: Duration::from_secs(5),
            max_services: 256,
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Endpoints watched from the control plane, one stream per service asked for.
#[derive(Debug)]
pub struct DiscoveryResolver {
    channel: Channel,
    options: DiscoveryOptions,
    watches: Mutex<HashMap<String, watch::Receiver<Known>>>,
}

impl DiscoveryResolver {
    /// A resolver over `channel` (a control-plane channel, see
    /// `ringfence_api::transport::control_plane_channel`).
    pub fn new(channel: Channel, options: DiscoveryOptions) -> Self {
        Self {
            channel,
            options,
            watches: Mutex::new(HashMap::new()),
        }
    }

    fn watch(&self, service: &ServiceName) -> Result<watch::Receiver<Known>, String> {
        let key = service.to_string();
        let mut watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = watches.get(&key) {
            return Ok(rx.clone());
        }
        if watches.len() >= self.options.max_services {
            // Make room from watches that hold nothing: failed, or listing no endpoint.
            watches.retain(|_, rx| match &*rx.borrow() {
                Known::Failed(_) => false,
                Known::Endpoints(e) => !e.is_empty(),
                Known::Waiting => true,
            });
        }
        if watches.len() >= self.options.max_services {
            return Err(format!(
                "discovery: already watching {} services, the most this proxy follows; {service} is not resolved",
                self.options.max_services
            ));
        }
        let (tx, rx) = watch::channel(Known::Waiting);
        watches.insert(key, rx.clone());
        tokio::spawn(follow(
            self.channel.clone(),
            service.clone(),
            self.options.clone(),
            tx,
        ));
        Ok(rx)
    }
}

#[async_trait::async_trait]
impl Resolver for DiscoveryResolver {
    async fn endpoints(&self, service: &ServiceName) -> Result<Arc<[SocketAddr]>, String> {
        let mut rx = self.watch(service)?;
        let known = match tokio::time::timeout(
            self.options.first_wait,
            rx.wait_for(|k| !matches!(k, Known::Waiting)),
        )
        .await
        {
            Ok(Ok(k)) => k.clone(),
            Ok(Err(_)) => Known::Failed("discovery: the watch ended".into()),
            Err(_) => Known::Failed(format!(
                "discovery: no answer from the control plane about {service} within {:?}",
                self.options.first_wait
            )),
        };
        match known {
            Known::Endpoints(e) => Ok(e),
            Known::Failed(why) => Err(why),
            Known::Waiting => Err("discovery: no answer yet".into()),
        }
    }
}

/// The endpoints in `reply` on the port named `port_name`; entries whose address is not an IP
/// address are skipped (and logged).
fn endpoints_of(reply: &pb::EndpointsReply, port_name: &str) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = reply
        .endpoints
        .iter()
        .filter(|e| e.port_name == port_name)
        .filter_map(|e| {
            let ip: IpAddr = match e.address.parse() {
                Ok(ip) => ip,
                Err(_) => {
                    tracing::warn!(task = %e.task, address = %e.address, "discovery: endpoint address is not an IP address; skipped");
                    return None;
                }
            };
            let port = u16::try_from(e.port).ok().filter(|p| *p != 0)?;
            Some(SocketAddr::new(ip, port))
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Follows one service's endpoints until the resolver is dropped, reconnecting with backoff.
async fn follow(
    channel: Channel,
    service: ServiceName,
    options: DiscoveryOptions,
    tx: watch::Sender<Known>,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut client = DiscoveryClient::new(channel.clone());
        let started = client
            .watch_endpoints(pb::EndpointsRequest {
                namespace: service.namespace().to_owned(),
                service: service.name().to_owned(),
            })
            .await;
        let why = match started {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(reply)) => {
                            let list = endpoints_of(&reply, &options.port_name);
                            tracing::info!(%service, endpoints = ?list, "discovery: endpoints");
                            if tx.send(Known::Endpoints(list.into())).is_err() {
                                return;
                            }
                            backoff = Duration::from_millis(200);
                        }
                        Ok(None) => break "the control plane ended the watch".to_owned(),
                        Err(s) => break s.message().to_owned(),
                    }
                }
            }
            Err(s)
                if s.code() == tonic::Code::PermissionDenied
                    || s.code() == tonic::Code::InvalidArgument =>
            {
                // Asking again will not change the answer for this identity or name.
                let why = format!("discovery refused {service}: {}", s.message());
                tracing::error!("{why}");
                let _ = tx.send(Known::Failed(why));
                return;
            }
            Err(s) => format!("{}: {}", s.code(), s.message()),
        };
        tracing::warn!(%service, reason = %why, retry_in = ?backoff, "discovery: watch lost");
        // Without a list yet, say why; with one, keep it (an endpoint is never trusted for
        // who it is, see the module documentation).
        if matches!(*tx.borrow(), Known::Waiting | Known::Failed(_)) {
            let _ = tx.send(Known::Failed(format!(
                "discovery: cannot watch {service}: {why}"
            )));
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = tx.closed() => return,
        }
        backoff = (backoff * 2).min(options.max_backoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(address: &str, port_name: &str, port: u32) -> pb::Endpoint {
        pb::Endpoint {
            task: "t".into(),
            machine: "m".into(),
            address: address.into(),
            port_name: port_name.into(),
            port,
        }
    }

    #[test]
    fn only_the_named_port_of_ip_addresses_counts() {
        let reply = pb::EndpointsReply {
            endpoints: vec![
                ep("10.0.0.2", "mesh", 15443),
                ep("10.0.0.2", "http", 8080),
                ep("fd00::1", "mesh", 15443),
                ep("host.example", "mesh", 15443),
                ep("10.0.0.3", "mesh", 70_000),
                ep("10.0.0.4", "mesh", 0),
                ep("10.0.0.2", "mesh", 15443),
            ],
        };
        let got = endpoints_of(&reply, "mesh");
        assert_eq!(
            got,
            vec![
                "10.0.0.2:15443".parse::<SocketAddr>().unwrap(),
                "[fd00::1]:15443".parse().unwrap(),
            ]
        );
    }
}
