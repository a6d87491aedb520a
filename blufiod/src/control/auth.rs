//! Authorization of control-socket callers by their peer credentials (`SO_PEERCRED`).
//!
//! Root and the daemon's own user (the owner) may do everything. Members of the configured group
//! (by primary group, by the supplementary groups of the calling process, or by the group
//! database) get the configured access, which never reaches the owner's calls and settings
//! ([`Need::Owner`]). Everybody else gets nothing. This module only decides; it never logs
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
/// Running a hook and choosing the vault's key are the owner's: the one runs programs as the
/// daemon's user, the other would let the caller open the secrets of any backup.
/// A method missing here needs full access.
pub const ACCESS: &[(&str, Need)] = &[
    ("GetStatus", Need::ReadOnly),
    ("GetConfig", Need::ReadOnly),
    ("ValidateConfig", Need::ReadOnly),
    ("GetMetrics", Need::ReadOnly),
    ("RunChecks", Need::ReadOnly),
    ("grpc.health.v1.Health", Need::ReadOnly),
    ("grpc.reflection", Need::ReadOnly),
    ("SetConfig", Need::Full),
    ("UnsetConfig", Need::Full),
    ("ReloadConfig", Need::Full),
    ("CreateSession", Need::Full),
    ("ListSessions", Need::Full),
    ("GetSession", Need::Full),
    ("DeleteSession", Need::Full),
    ("RenameSession", Need::Full),
    ("PruneSessions", Need::Full),
    ("SendMessage", Need::Full),
    ("GetUsage", Need::Full),
    ("AddDevice", Need::Full),
    ("ListDevices", Need::Full),
    ("RevokeDevice", Need::Full),
    ("RenameDevice", Need::Full),
    ("RemoveDevice", Need::Full),
    ("SetSecret", Need::Full),
    ("ListSecrets", Need::Full),
    ("DeleteSecret", Need::Full),
    ("GetVaultStatus", Need::Full),
    ("RekeyVault", Need::Owner),
    ("Backup", Need::Full),
    ("Restore", Need::Full),
    ("ReadLogs", Need::Full),
    ("ListHooks", Need::Full),
    ("TestHook", Need::Owner),
];

/// What a call, or a part of one, needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Need {
    /// Read-only access or more.
    ReadOnly,
    /// Full access.
    Full,
    /// Root or the daemon's own user. These calls and settings decide which programs, files and
    /// hosts the daemon trusts with its own uid and keys; a group's full access would otherwise
    /// make every member the daemon's user (root, when the daemon runs as root).
    Owner,
}

impl Need {
    fn as_str(self) -> &'static str {
        match self {
            Need::ReadOnly => "read-only",
            Need::Full => "full",
            Need::Owner => "owner",
        }
    }
}

/// What `method` needs.
pub fn needed_for(method: &str) -> Need {
    ACCESS
        .iter()
        .find(|(name, _)| *name == method)
        .map_or(Need::Full, |(_, need)| *need)
}

/// An authorized caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// Its uid.
    pub uid: u32,
    /// The access it has.
    pub access: Access,
    /// Whether it is root or the daemon's own user.
    pub owner: bool,
}

impl Caller {
    /// Whether the caller has what `need` asks.
    pub fn may(&self, need: Need) -> bool {
        match need {
            Need::ReadOnly => self.access >= Access::ReadOnly,
            Need::Full => self.access >= Access::Full,
            Need::Owner => self.owner,
        }
    }

    /// Refuses, unless the caller is the owner, the part of a call that `what` describes (for
    /// example "set hooks.post_start").
    pub fn require_owner(&self, what: &str) -> Result<(), Status> {
        if self.owner {
            return Ok(());
        }
        DENIALS.log(self.uid, what);
        Err(Status::permission_denied(format!(
            "uid {} may not {what}: only root and the daemon's own user may, because it decides which programs, files or hosts the daemon trusts with its own identity and keys (a group's full access does not include it); ask the daemon's owner",
            self.uid
        )))
    }
}

/// Checks that the peer of a request (its `SO_PEERCRED`, which tonic puts in the request's
/// extensions) may call `method`; returns the peer's access. No credentials means no access.
pub fn authorize(
    policy: &Policy,
    group_access: Access,
    extensions: &http::Extensions,
    method: &str,
) -> Result<Caller, Status> {
    let credentials = extensions
        .get::<super::incoming::ConnectionInfo>()
        .and_then(|info| info.uds.peer_cred);
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
    let caller = Caller {
        uid: peer.uid,
        access: policy.access_of(peer, group_access),
        owner: policy.is_owner(peer),
    };
    let needed = needed_for(method);
    if caller.may(needed) {
        return Ok(caller);
    }
    DENIALS.log(peer.uid, method);
    let why = match needed {
        Need::Owner => format!(
            "only root and the daemon's own user (uid {}) may, whatever control.group_access says",
            policy.daemon_uid
        ),
        _ => policy.hint(peer),
    };
    Err(Status::permission_denied(format!(
        "uid {} has {} access but {method} needs {}: {why}",
        peer.uid,
        caller.access.as_str(),
        needed.as_str(),
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
    /// Whether `peer` is root or the daemon's own user.
    pub fn is_owner(&self, peer: Peer) -> bool {
        peer.uid == 0 || peer.uid == self.daemon_uid
    }

    /// The access `peer` has, given the group's configured `group_access`.
    pub fn access_of(&self, peer: Peer, group_access: Access) -> Access {
        if self.is_owner(peer) {
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
            Need::Full,
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
    fn a_groups_full_access_does_not_reach_the_owners_calls() {
        let policy = policy(Some(operators()));
        let member = Caller {
            uid: 1000,
            access: policy.access_of(peer(1000, 4242), Access::Full),
            owner: policy.is_owner(peer(1000, 4242)),
        };
        assert!(member.may(Need::Full) && !member.may(Need::Owner));
        let status = member.require_owner("set hooks.post_start").unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(
            status.message().contains("only root and the daemon's own user"),
            "{status:?}"
        );
        for owner in [peer(0, 0), peer(998, 998)] {
            assert!(policy.is_owner(owner));
        }
        assert_eq!(needed_for("TestHook"), Need::Owner);
        assert_eq!(needed_for("RekeyVault"), Need::Owner);
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
