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
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
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
