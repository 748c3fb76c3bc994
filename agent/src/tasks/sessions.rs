//! The agent's SSH sessions: one per peer site, shared by every run and file it copies.
//!
//! Opening an SSH connection costs a TCP handshake, a key exchange, an authentication and
//! the SFTP channels' set-up; a cycle that copies hundreds of files to one mirror must pay
//! that once, not per file or per run. [`SessionPool`] keeps one [`SshSession`] per site
//! name for the life of the agent (across cycles too) and connects again when the one it
//! holds has closed (server restart, network cut, idle timeout) or a copy reported the
//! connection lost ([`SessionPool::forget`]).
//!
//! A site's connection settings come from the site map through
//! [`SshEnvironment::resolve`], so `~/.ssh/config` fills what the site map leaves out
//! ([`target_for`]). Connecting to two different sites never waits on each other: each site
//! has its own slot, locked only while that site connects.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::{
    HostKeyPolicy as SiteHostKeyPolicy, Site, SshEnvironment, SshRoute, SshSettings,
};
use crate::transport::ssh::Route;
use crate::transport::{HostKeyPolicy, SshSession, SshTarget, TransportError};

/// The transport target for `site`, resolved as `ssh` would (site map, then
/// `~/.ssh/config`, then OpenSSH's defaults).
///
/// The site map's host-key policy `no` has no equivalent in the transport, which always
/// refuses a *changed* host key: it is taken as `accept-new` (unknown keys are recorded, a
/// changed key is still refused) and a warning says so.
pub fn target_for(env: &SshEnvironment, site: &Site) -> SshTarget {
    target_from(env.resolve(site), &site.name)
}

/// The transport target for resolved settings (the route's hops too).
fn target_from(settings: SshSettings, site: &str) -> SshTarget {
    let mut target = SshTarget::new(settings.hostname, settings.port, settings.user);
    target.identity_files = settings.identity_files;
    target.known_hosts_files = settings.known_hosts;
    target.use_agent = !settings.identities_only;
    if let Some(t) = settings.connect_timeout.filter(|t| !t.is_zero()) {
        target.connect_timeout = t;
    }
    if let Some(k) = settings.server_alive_interval {
        target.keepalive_interval = (!k.is_zero()).then_some(k);
    }
    target.host_key_policy = match settings.host_key_policy {
        SiteHostKeyPolicy::Strict => HostKeyPolicy::Strict,
        SiteHostKeyPolicy::AcceptNew => HostKeyPolicy::AcceptNew,
        SiteHostKeyPolicy::No => {
            tracing::warn!(
                site = %site,
                host = %target.host,
                "host-key policy `no` is applied as `accept-new`: a changed host key is refused"
            );
            HostKeyPolicy::AcceptNew
        }
    };
    target.route = match settings.route {
        SshRoute::Direct => Route::Direct,
        SshRoute::Jump(hops) => {
            Route::Jump(hops.into_iter().map(|h| target_from(h, site)).collect())
        }
        SshRoute::Command(argv) => Route::Command(argv),
    };
    target
}

/// One slot per site: the session, if one is open.
type Slot = Arc<tokio::sync::Mutex<Option<Arc<SshSession>>>>;

/// Open SSH sessions, one per peer site. Cheap to share (`Arc<SessionPool>`).
pub struct SessionPool {
    env: SshEnvironment,
    slots: Mutex<HashMap<String, Slot>>,
    connects: AtomicU64,
}

impl std::fmt::Debug for SessionPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sites: Vec<String> = match self.slots.lock() {
            Ok(slots) => slots.keys().cloned().collect(),
            Err(poisoned) => poisoned.into_inner().keys().cloned().collect(),
        };
        f.debug_struct("SessionPool")
            .field("sites", &sites)
            .field("connects", &self.connects())
            .finish()
    }
}

impl SessionPool {
    /// An empty pool resolving sites' settings with `env`.
    pub fn new(env: SshEnvironment) -> Self {
        SessionPool {
            env,
            slots: Mutex::new(HashMap::new()),
            connects: AtomicU64::new(0),
        }
    }

    fn slot(&self, site: &str) -> Slot {
        let mut slots = match self.slots.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        slots.entry(site.to_owned()).or_default().clone()
    }

    /// The open session to `site`, connecting (again) if there is none or it has closed.
    pub async fn session(&self, site: &Site) -> Result<Arc<SshSession>, TransportError> {
        let slot = self.slot(&site.name);
        let mut held = slot.lock().await;
        if let Some(session) = held.as_ref() {
            if !session.is_closed() {
                return Ok(session.clone());
            }
            tracing::info!(site = %site.name, "SSH session closed; connecting again");
        }
        let target = target_for(&self.env, site);
        tracing::debug!(site = %site.name, host = %target.host, port = target.port, user = %target.user, "connecting");
        let session = Arc::new(SshSession::connect(&target).await?);
        self.connects.fetch_add(1, Ordering::Relaxed);
        tracing::info!(site = %site.name, host = %target.host, port = target.port, "SSH session open");
        *held = Some(session.clone());
        Ok(session)
    }

    /// Drops the session to `site` (after a copy saw its connection fail), so that the next
    /// [`SessionPool::session`] connects anew. Copies still using it keep their `Arc`.
    pub async fn forget(&self, site: &str) {
        let slot = self.slot(site);
        let mut held = slot.lock().await;
        *held = None;
    }

    /// How many connections this pool has opened so far.
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LayoutTemplate, TransferMethod};
    use std::path::{Path, PathBuf};

    fn site(name: &str) -> Site {
        Site {
            name: name.into(),
            description: None,
            hostname: Some("127.0.0.1".into()),
            port: Some(2222),
            username: Some("xfer".into()),
            identity_file: Some(PathBuf::from("~/.ssh/ferry")),
            host_key_policy: Some(SiteHostKeyPolicy::No),
            known_hosts: Some(PathBuf::from("/etc/ferry/known_hosts")),
            method: TransferMethod::Sftp,
            verify: Default::default(),
            origin: false,
            data_dirs: Default::default(),
            layout: LayoutTemplate::default(),
            create_data_dirs: false,
            link_roots: Vec::new(),
            push_to: vec![],
            pull_from: vec![],
            completion: Default::default(),
            tape: vec![],
            purge: Default::default(),
            limits: Default::default(),
        }
    }

    #[test]
    fn site_map_settings_reach_the_target_and_policy_no_still_refuses_changed_keys() {
        let env = SshEnvironment::from_text("", Path::new("/home/op"), "op").unwrap();
        let t = target_for(&env, &site("mirror"));
        assert_eq!(
            (t.host.as_str(), t.port, t.user.as_str()),
            ("127.0.0.1", 2222, "xfer")
        );
        assert_eq!(t.identity_files, [PathBuf::from("/home/op/.ssh/ferry")]);
        assert_eq!(
            t.known_hosts_files,
            [PathBuf::from("/etc/ferry/known_hosts")]
        );
        assert_eq!(t.host_key_policy, HostKeyPolicy::AcceptNew);
    }

    #[tokio::test]
    async fn unreachable_site_is_a_retryable_connect_error_and_nothing_is_kept() {
        // A port nothing listens on: bind one, then close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = site("gone");
        s.port = Some(port);
        let env = SshEnvironment::from_text("", Path::new("/nonexistent"), "op").unwrap();
        let pool = SessionPool::new(env);
        let err = pool.session(&s).await.unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert!(err.to_string().contains(&port.to_string()), "{err}");
        assert_eq!(pool.connects(), 0);
    }
}
