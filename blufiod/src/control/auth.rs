//! Authorization of control-socket callers by their peer credentials (`SO_PEERCRED`).
//!
//! Root and the daemon's own user may do everything. Members of the configured group (by primary
//! group, by the supplementary groups of the calling process, or by the group database) get the
//! configured access. Everybody else gets nothing. This module only decides; it never logs
//! secrets and never consults anything but credentials and the group database.

use tonic::Status;

use crate::config::Access;

/// What each call needs: the one authorization table. Read-only access is for watching the
/// daemon's health and settings: status and metrics, the (masked) configuration and config
/// checks, the gRPC health service and reflection (status and metrics show spend totals, as a
/// loopback scrape of `/metrics` does). Conversations, usage reports, devices and every change
/// need full access, and so do the daemon's log lines, which name devices, sessions and peers.
/// The doctor's checks only look, so they are read-only too; their details
/// name paths and settings a read-only caller already sees in status and the masked config.
/// A method missing here needs full access.
pub const ACCESS: &[(&str, Access)] = &[
    ("GetStatus", Access::ReadOnly),
    ("GetConfig", Access::ReadOnly),
    ("ValidateConfig", Access::ReadOnly),
    ("GetMetrics", Access::ReadOnly),
    ("RunChecks", Access::ReadOnly),
    ("grpc.health.v1.Health", Access::ReadOnly),
    ("grpc.reflection", Access::ReadOnly),
    ("SetConfig", Access::Full),
    ("UnsetConfig", Access::Full),
    ("ReloadConfig", Access::Full),
    ("CreateSession", Access::Full),
    ("ListSessions", Access::Full),
    ("GetSession", Access::Full),
    ("DeleteSession", Access::Full),
    ("RenameSession", Access::Full),
    ("PruneSessions", Access::Full),
    ("SendMessage", Access::Full),
    ("GetUsage", Access::Full),
    ("AddDevice", Access::Full),
    ("ListDevices", Access::Full),
    ("RevokeDevice", Access::Full),
    ("RenameDevice", Access::Full),
    ("RemoveDevice", Access::Full),
    ("SetSecret", Access::Full),
    ("ListSecrets", Access::Full),
    ("DeleteSecret", Access::Full),
    ("GetVaultStatus", Access::Full),
    ("RekeyVault", Access::Full),
    ("Backup", Access::Full),
    ("Restore", Access::Full),
    ("ReadLogs", Access::Full),
    ("ListHooks", Access::Full),
    ("TestHook", Access::Full),
];

/// The access `method` needs.
pub fn needed_for(method: &str) -> Access {
    ACCESS
        .iter()
        .find(|(name, _)| *name == method)
        .map_or(Access::Full, |(_, access)| *access)
}

/// Checks that the peer of a request (its `SO_PEERCRED`, which tonic puts in the request's
/// extensions) may call `method`; returns the peer's access. No credentials means no access.
pub fn authorize(
    policy: &Policy,
    group_access: Access,
    extensions: &http::Extensions,
    method: &str,
) -> Result<Access, Status> {
    let credentials = extensions
        .get::<tonic::transport::server::UdsConnectInfo>()
        .and_then(|info| info.peer_cred);
    let Some(credentials) = credentials else {
        return Err(Status::permission_denied(
            "the caller's credentials are unknown, so the call is refused; connect over the Unix socket",
        ));
    };
    let peer = Peer {
        uid: credentials.uid(),
        gid: credentials.gid(),
        pid: credentials.pid(),
    };
    let access = policy.access_of(peer, group_access);
    let needed = needed_for(method);
    if access >= needed {
        return Ok(access);
    }
    DENIALS.log(peer.uid, method);
    Err(Status::permission_denied(format!(
        "uid {} has {} access but {method} needs {}: {}",
        peer.uid,
        access.as_str(),
        needed.as_str(),
        policy.hint(peer)
    )))
}

/// The refused calls that get a log line: at most one a second, whoever calls; the next line says
/// how many were refused in between. A caller refused in a loop cannot flood the log, the journal
/// or the ring that `blufioctl logs` reads (5,000 lines a second without this).
static DENIALS: DenialLog = DenialLog::new();

/// See [`DENIALS`].
struct DenialLog {
    /// The second (since the Unix epoch) of the last line.
    last_second: std::sync::atomic::AtomicU64,
    /// Refusals not logged since that line.
    unlogged: std::sync::atomic::AtomicU64,
}

impl DenialLog {
    const fn new() -> Self {
        Self {
            last_second: std::sync::atomic::AtomicU64::new(0),
            unlogged: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Logs this refusal, unless one was logged in the same second (then it is counted).
    fn log(&self, uid: u32, method: &str) -> bool {
        use std::sync::atomic::Ordering;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let last = self.last_second.load(Ordering::Relaxed);
        if last == now
            || self
                .last_second
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let also = self.unlogged.swap(0, Ordering::Relaxed);
        tracing::warn!(
            uid,
            method,
            also_refused_since_the_last_line = also,
            "control call denied"
        );
        true
    }
}

/// Who may do what, fixed at startup except for the group's access level.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The daemon's effective uid.
    pub daemon_uid: u32,
    /// The configured group, resolved at startup.
    pub group: Option<GroupInfo>,
}

/// A resolved group.
#[derive(Debug, Clone)]
pub struct GroupInfo {
    /// Its name.
    pub name: String,
    /// Its gid.
    pub gid: u32,
    /// User names listed as members in the group database.
    pub members: Vec<String>,
}

/// The credentials of a connected peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Process id, when the kernel reported one.
    pub pid: Option<i32>,
}

impl Policy {
    /// The access `peer` has, given the group's configured `group_access`.
    pub fn access_of(&self, peer: Peer, group_access: Access) -> Access {
        if peer.uid == 0 || peer.uid == self.daemon_uid {
            return Access::Full;
        }
        match &self.group {
            Some(group) if is_member(group, peer) => group_access,
            _ => Access::None,
        }
    }

    /// A hint for a denied caller: what would grant access.
    pub fn hint(&self, peer: Peer) -> String {
        match &self.group {
            Some(group) if is_member(group, peer) => format!(
                "members of group {:?} have the access set by control.group_access; the daemon's owner can raise it",
                group.name
            ),
            Some(group) => format!(
                "ask the daemon's owner to add uid {} to group {:?}",
                peer.uid, group.name
            ),
            None => {
                "only root and the daemon's own user may use this socket; the owner can set control.group".to_owned()
            }
        }
    }
}

fn is_member(group: &GroupInfo, peer: Peer) -> bool {
    if peer.gid == group.gid {
        return true;
    }
    if let Some(pid) = peer.pid
        && supplementary_groups(pid).is_some_and(|groups| groups.contains(&group.gid))
    {
        return true;
    }
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(peer.uid)) {
        Ok(Some(user)) => group.members.contains(&user.name),
        _ => false,
    }
}

/// The supplementary groups of a process, from `/proc/<pid>/status`.
fn supplementary_groups(pid: i32) -> Option<Vec<u32>> {
    parse_groups(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

fn parse_groups(status: &str) -> Option<Vec<u32>> {
    let line = status.lines().find_map(|line| line.strip_prefix("Groups:"))?;
    Some(line.split_whitespace().filter_map(|gid| gid.parse().ok()).collect())
}

/// Resolves a group name from the config.
pub fn resolve_group(name: &str) -> Option<GroupInfo> {
    let group = nix::unistd::Group::from_name(name).ok()??;
    Some(GroupInfo {
        name: group.name,
        gid: group.gid.as_raw(),
        members: group.mem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_in_a_loop_get_one_line_a_second() {
        let denials = DenialLog::new();
        let logged = (0..10_000).filter(|_| denials.log(1000, "GetStatus")).count();
        // The loop may straddle a second boundary.
        assert!((1..=2).contains(&logged), "{logged} lines for 10,000 refusals");
        let unlogged = denials.unlogged.load(std::sync::atomic::Ordering::Relaxed);
        if logged == 1 {
            assert_eq!(unlogged, 9_999, "the rest are counted for the next line");
        }
    }

    #[test]
    fn a_peer_without_credentials_gets_nothing() {
        let policy = Policy {
            daemon_uid: 1000,
            group: None,
        };
        for method in ["GetStatus", "grpc.health.v1.Health", "SetConfig", "Unknown"] {
            let status = authorize(&policy, Access::Full, &http::Extensions::new(), method).unwrap_err();
            assert_eq!(status.code(), tonic::Code::PermissionDenied, "{method}");
        }
        assert_eq!(
            needed_for("Unknown"),
            Access::Full,
            "a method missing from the table needs full access"
        );
    }

    fn policy(group: Option<GroupInfo>) -> Policy {
        Policy { daemon_uid: 998, group }
    }

    fn peer(uid: u32, gid: u32) -> Peer {
        Peer { uid, gid, pid: None }
    }

    fn operators() -> GroupInfo {
        GroupInfo {
            name: "blufio".to_owned(),
            gid: 4242,
            members: vec!["no-such-user-blufio".to_owned()],
        }
    }

    #[test]
    fn root_and_the_daemon_user_have_full_access() {
        let policy = policy(None);
        assert_eq!(policy.access_of(peer(0, 0), Access::None), Access::Full);
        assert_eq!(policy.access_of(peer(998, 998), Access::None), Access::Full);
    }

    #[test]
    fn group_members_get_the_configured_access() {
        let policy = policy(Some(operators()));
        assert_eq!(policy.access_of(peer(1000, 4242), Access::ReadOnly), Access::ReadOnly);
        assert_eq!(policy.access_of(peer(1000, 4242), Access::Full), Access::Full);
        assert_eq!(policy.access_of(peer(1000, 4242), Access::None), Access::None);
    }

    #[test]
    fn strangers_get_nothing() {
        assert_eq!(
            policy(Some(operators())).access_of(peer(1000, 1000), Access::Full),
            Access::None
        );
        assert_eq!(policy(None).access_of(peer(1000, 1000), Access::Full), Access::None);
        assert!(policy(None).hint(peer(1000, 1000)).contains("control.group"));
    }

    #[test]
    fn supplementary_groups_are_read_from_proc_status() {
        let status = "Name:\tblufioctl\nUid:\t1000\t1000\t1000\t1000\nGroups:\t24 27 4242 \nNgid:\t0\n";
        assert_eq!(parse_groups(status), Some(vec![24, 27, 4242]));
        assert_eq!(parse_groups("Name:\tx\n"), None);
        let own = supplementary_groups(i32::try_from(std::process::id()).unwrap());
        assert!(own.is_some(), "/proc/<pid>/status of a live process has a Groups line");
    }
}
