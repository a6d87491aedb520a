//! The packaging files as systemd reads them: the unit passes `systemd-analyze verify`, keeps
//! its hardening, and talks the notify protocol the daemon implements.

use blufio_testkit as support;

use std::process::Command;

use support::describe;

fn unit_with_built_binary(dir: &std::path::Path) -> std::path::PathBuf {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/blufiod.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/blufiod\n"),
        "the unit starts /usr/bin/blufiod"
    );
    // verify checks that ExecStart exists, so point it at the binary under test.
    let unit = unit.replace(
        "ExecStart=/usr/bin/blufiod",
        &format!("ExecStart={}", support::blufiod_bin().display()),
    );
    let path = dir.join("blufiod.service");
    std::fs::write(&path, unit).unwrap();
    path
}

#[test]
fn the_systemd_unit_verifies_and_stays_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_with_built_binary(dir.path());
    // The optional socket unit verifies beside it (its service is this unit).
    let socket = dir.path().join("blufiod.socket");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/blufiod.socket"),
        &socket,
    )
    .unwrap();
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .arg(&socket)
        .output()
        .expect("systemd-analyze is needed (Debian package `systemd`; .ci/run installs it)");
    assert!(verify.status.success(), "{}", describe(&verify));
    // verify may exit 0 and still warn about unknown settings.
    assert!(
        verify.stderr.is_empty() && verify.stdout.is_empty(),
        "{}",
        describe(&verify)
    );

    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=20"])
        .arg(&unit)
        .output()
        .unwrap();
    assert!(security.status.success(), "exposure above 2.0: {}", describe(&security));

    let text = std::fs::read_to_string(&unit).unwrap();
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "RestartPreventExitStatus=2",
        // No core dump may carry the API key or the TLS key to disk.
        "LimitCORE=0",
    ] {
        assert!(text.contains(line), "the unit lost {line:?}");
    }
}

/// The kernel's limits in the unit sit above blufiod's own default limit, so that the daemon
/// sheds and refuses before the kernel throttles or kills it.
#[test]
fn the_units_memory_limits_sit_above_the_daemons_own() {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/blufiod.service")).unwrap();
    let mib = |key: &str| -> u64 {
        let value = unit
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("the unit sets no {key}"));
        value.strip_suffix('M').expect("in MiB").parse().unwrap()
    };
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/blufiod.example.toml"
    ))
    .unwrap();
    let limit: u64 = example
        .lines()
        .find_map(|line| line.strip_prefix("# limit_mib = "))
        .expect("the example documents memory.limit_mib's default")
        .parse()
        .unwrap();
    // The daemon's default, as it reports it.
    let output = Command::new(support::blufiod_bin())
        .args(["--check-config", "--json", "--config", "/dev/null"])
        .output()
        .unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).unwrap_or_else(|_| panic!("{}", describe(&output)));
    let default = report["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|key| key["key"] == "memory.limit_mib")
        .unwrap()["value"]
        .as_str()
        .unwrap()
        .parse::<u64>()
        .unwrap();
    assert_eq!(limit, default, "the example states the default");
    assert!(
        mib("MemoryHigh") * 4 >= default * 5,
        "MemoryHigh at least 1.25 times memory.limit_mib"
    );
    assert!(
        mib("MemoryMax") * 2 >= default * 3,
        "MemoryMax at least 1.5 times memory.limit_mib"
    );
    assert!(mib("MemoryMax") > mib("MemoryHigh"));
}

/// `dist/` as `cargo xtask test` leaves it (`cargo xtask dist --profile dev`): the release tree
/// (through the link `dist/stage`) and the Debian package.
fn dist() -> (std::path::PathBuf, std::path::PathBuf) {
    let dist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist");
    let tree = dist.join("stage");
    assert!(
        tree.join("install.sh").exists(),
        "{} is missing: run `cargo xtask test` (it builds dist/ first) or `cargo xtask dist --profile dev`",
        tree.display()
    );
    let deb = std::fs::read_dir(&dist)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|extension| extension == "deb"))
        .expect("a .deb in dist/");
    (tree, deb)
}

/// Every absolute path of blufio's under /usr or /etc/logrotate.d that the README, the docs, the
/// unit and the example config name.
fn documented_paths() -> std::collections::BTreeSet<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut texts = vec![
        std::fs::read_to_string(root.join("README.md")).unwrap(),
        std::fs::read_to_string(root.join("packaging/blufiod.service")).unwrap(),
        std::fs::read_to_string(root.join("packaging/blufiod.example.toml")).unwrap(),
    ];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        texts.push(std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    let mut paths = std::collections::BTreeSet::new();
    for text in &texts {
        for (start, _) in text
            .match_indices("/usr/")
            .chain(text.match_indices("/etc/logrotate.d/"))
        {
            // A path starts after a space, a quote, a backtick, `=` or a bracket.
            if start > 0 && !" `\"'=([\n".contains(&text[start - 1..start]) {
                continue;
            }
            let path: String = text[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "/._-".contains(*c))
                .collect();
            let path = path.trim_end_matches(['.', '/']).to_owned();
            // blufio's own files; programs the system provides (/usr/bin/logger in an example)
            // are not the package's.
            if !path.contains("blufio") {
                continue;
            }
            paths.insert(path);
        }
    }
    paths
}

#[test]
fn the_debian_package_holds_every_path_the_docs_name() {
    let (_, deb) = dist();
    let listing = Command::new("dpkg-deb").arg("--contents").arg(&deb).output().unwrap();
    assert!(listing.status.success(), "{}", describe(&listing));
    let contents: std::collections::BTreeSet<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().last())
        .map(|path| path.trim_start_matches('.').trim_end_matches('/').to_owned())
        .collect();
    let documented = documented_paths();
    assert!(
        documented.contains("/usr/bin/blufiod") && documented.contains("/usr/share/blufio/hooks/budget-webhook"),
        "{documented:?}"
    );
    for path in &documented {
        let installed = contents.contains(path)
            || contents.contains(&format!("{path}.gz"))
            // A directory that holds files, such as /usr/share/man/man1.
            || contents.iter().any(|item| item.starts_with(&format!("{path}/")));
        assert!(installed, "{path} is named in the docs but not in {}", deb.display());
    }
    for required in [
        "/usr/bin/blufiod",
        "/usr/bin/blufioctl",
        "/usr/lib/systemd/system/blufiod.service",
        "/usr/lib/sysusers.d/blufio.conf",
        "/usr/lib/tmpfiles.d/blufio.conf",
        "/etc/logrotate.d/blufiod",
        "/usr/share/man/man1/blufioctl.1.gz",
        "/usr/share/man/man1/blufioctl-doctor.1.gz",
        "/usr/share/man/man8/blufiod.8.gz",
        "/usr/share/bash-completion/completions/blufioctl",
        "/usr/share/zsh/vendor-completions/_blufioctl",
        "/usr/share/fish/vendor_completions.d/blufioctl.fish",
    ] {
        assert!(
            contents.contains(required),
            "{required} is missing from {}",
            deb.display()
        );
    }
}

/// Every file under `root`, relative, with its mode.
fn tree_of(root: &std::path::Path) -> std::collections::BTreeMap<String, u32> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut files = std::collections::BTreeMap::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let metadata = entry.metadata().unwrap();
            if metadata.is_dir() {
                pending.push(entry.path());
            } else {
                let relative = entry.path().strip_prefix(root).unwrap().display().to_string();
                files.insert(format!("/{relative}"), metadata.permissions().mode() & 0o7777);
            }
        }
    }
    files
}

#[test]
fn install_sh_installs_idempotently_and_uninstalls_keeping_the_state() {
    let (tree, deb) = dist();
    let target = tempfile::tempdir().unwrap();
    let install = |args: &[&str]| {
        let output = Command::new(tree.join("install.sh"))
            .arg("--root")
            .arg(target.path())
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", describe(&output));
    };
    install(&[]);
    let first = tree_of(target.path());
    install(&[]);
    assert_eq!(tree_of(target.path()), first, "a second run changes nothing");
    assert_eq!(first.get("/usr/bin/blufiod"), Some(&0o755));
    assert_eq!(first.get("/usr/share/blufio/hooks/backup-offsite"), Some(&0o755));
    assert_eq!(first.get("/usr/lib/systemd/system/blufiod.service"), Some(&0o644));
    assert!(first.contains_key("/usr/share/man/man1/blufioctl-hooks-test.1"));
    assert!(first.contains_key("/usr/share/man/man8/blufiod.8"));
    // The same files as the Debian package (which compresses man pages and adds its copyright).
    let listing = Command::new("dpkg-deb").arg("--contents").arg(&deb).output().unwrap();
    let packaged: std::collections::BTreeSet<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .filter(|line| !line.starts_with('d'))
        .filter_map(|line| line.split_whitespace().last())
        .map(|path| path.trim_start_matches('.').trim_end_matches(".gz").to_owned())
        .filter(|path| path != "/usr/share/doc/blufio/copyright")
        .collect();
    let installed: std::collections::BTreeSet<String> = first
        .keys()
        .filter(|path| *path != "/usr/share/blufio/installed-files")
        .cloned()
        .collect();
    assert_eq!(
        installed, packaged,
        "install.sh and the Debian package install the same files"
    );

    // The state the daemon made, and the owner's config, survive an uninstall.
    std::fs::create_dir_all(target.path().join("var/lib/blufio")).unwrap();
    std::fs::write(target.path().join("var/lib/blufio/blufio.db"), "data").unwrap();
    std::fs::create_dir_all(target.path().join("etc/blufio")).unwrap();
    std::fs::write(target.path().join("etc/blufio/blufiod.toml"), "").unwrap();
    // A manifest line outside the installed places is ignored, never removed.
    let precious = target.path().join("precious");
    std::fs::write(&precious, "keep").unwrap();
    let manifest = target.path().join("usr/share/blufio/installed-files");
    let mut listed = std::fs::read_to_string(&manifest).unwrap();
    listed.push_str("/usr/../precious\n/precious\n");
    std::fs::write(&manifest, listed).unwrap();
    install(&["--uninstall"]);
    assert!(
        precious.exists(),
        "a tampered manifest removed a file outside the installed places"
    );
    std::fs::remove_file(&precious).unwrap();
    let left = tree_of(target.path());
    assert_eq!(
        left.keys().collect::<Vec<_>>(),
        ["/etc/blufio/blufiod.toml", "/var/lib/blufio/blufio.db"],
        "only the owner's files are left"
    );
}

fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The Debian package in a throwaway container made here: an overlay over this machine's root,
/// in a private mount namespace, chrooted into. Installing creates the user and directories and
/// enables the unit, which verifies in place; removing keeps the state, and so does a purge
/// unless asked.
#[test]
fn the_debian_package_installs_and_removes_cleanly_in_a_container() {
    if !running_as_root() {
        eprintln!("skipped: needs root for the container (CI runs as root)");
        return;
    }
    let (_, deb) = dist();
    let work = tempfile::tempdir().unwrap();
    let script = r#"set -eu
work=$1; deb=$2
mkdir -p "$work/upper" "$work/scratch" "$work/root"
mount -t overlay overlay -o lowerdir=/,upperdir="$work/upper",workdir="$work/scratch" "$work/root"
mount -t proc proc "$work/root/proc"
mount -t tmpfs tmpfs "$work/root/run"
mount -t tmpfs tmpfs "$work/root/tmp"
cp "$deb" "$work/root/tmp/blufio.deb"
exec chroot "$work/root" /bin/sh -c '
set -eu
dpkg --purge blufio >/dev/null 2>&1 || true
rm -rf /var/lib/blufio /etc/blufio
dpkg -i /tmp/blufio.deb
echo "user: $(getent passwd blufio | cut -d: -f1)"
echo "state: $(stat -c "%a %U" /var/lib/blufio)"
echo "config: $(stat -c "%a %U" /etc/blufio)"
test -L /etc/systemd/system/multi-user.target.wants/blufiod.service && echo enabled
test -f /usr/share/blufio/systemd/blufiod.socket && test ! -e /etc/systemd/system/sockets.target.wants/blufiod.socket && ! grep -q blufiod.socket /var/lib/dpkg/info/blufio.postinst && echo socket-not-enabled
systemd-analyze verify --man=no /usr/lib/systemd/system/blufiod.service && echo verified
logrotate --debug /etc/logrotate.d/blufiod 2>&1 | grep -i "error" && exit 9
echo logrotate-ok
runuser -u blufio -- blufiod --check-config >/dev/null && echo config-ok
man -w blufioctl-doctor >/dev/null && echo man-ok
dpkg -r blufio
test ! -e /usr/bin/blufiod && echo removed
test -d /var/lib/blufio && echo state-kept
dpkg --purge blufio
test -d /var/lib/blufio && test -d /etc/blufio && echo state-kept-after-purge
dpkg -i /tmp/blufio.deb >/dev/null
BLUFIO_PURGE_STATE=yes dpkg --purge blufio
test ! -e /var/lib/blufio && echo state-purged-when-asked
'
"#;
    let output = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script, "container"])
        .arg(work.path())
        .arg(&deb)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", describe(&output));
    for said in [
        "user: blufio\n",
        "state: 700 blufio\n",
        "config: 750 blufio\n",
        "enabled\n",
        "socket-not-enabled\n",
        "verified\n",
        "logrotate-ok\n",
        "config-ok\n",
        "man-ok\n",
        "removed\n",
        "state-kept\n",
        "state-kept-after-purge\n",
        "state-purged-when-asked\n",
    ] {
        assert!(text.contains(said), "missing {said:?}: {}", describe(&output));
    }
}
