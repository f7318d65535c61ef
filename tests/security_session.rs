//! Session directories are trusted only when they are this user's alone: `manta status` (and
//! every command reading the latest session) refuses a `session_latest` planted to point
//! elsewhere, a symlinked token file, a world-writable or foreign-owned session directory or
//! root, each with an error naming the path. (`manta stop` removing the token is checked in
//! `security_token.rs`, against a running cluster.)

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

fn manta_bin() -> String {
    std::env::var("MANTA_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_manta").to_owned())
}

/// `manta status` against the session root `root`; returns (success, stderr).
fn status(root: &Path) -> (bool, String) {
    let out = Command::new("timeout")
        .arg("30")
        .arg(manta_bin())
        .arg("status")
        .env("MANTA_SESSION_ROOT", root)
        .env_remove("MANTA_SESSION_DIR")
        .env_remove("MANTA_ADDRESS")
        .env_remove("MANTA_TOKEN")
        .output()
        .expect("running manta");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn mkdir(p: &Path, mode: u32) {
    std::fs::DirBuilder::new().mode(mode).create(p).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn private_file(p: &Path, contents: &str) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(p)
        .unwrap();
    std::io::Write::write_all(&mut f, contents.as_bytes()).unwrap();
}

/// A root holding one well-formed session (`session_1`, an address nobody listens on).
fn session_root(name: &str) -> (PathBuf, PathBuf) {
    let root = std::env::temp_dir().join(format!("manta-sess-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    mkdir(&root, 0o700);
    let dir = root.join("session_1");
    mkdir(&dir, 0o700);
    private_file(&dir.join("address"), "127.0.0.1:1");
    private_file(&dir.join("token"), "the-token");
    std::os::unix::fs::symlink(&dir, root.join("session_latest")).unwrap();
    (root, dir)
}

fn assert_refused(root: &Path, why: &str) {
    let (ok, stderr) = status(root);
    assert!(!ok, "manta status must fail");
    assert!(
        stderr.contains("refusing") && stderr.contains(why),
        "expected a refusal naming {why:?}, got: {stderr}"
    );
}

#[test]
fn a_well_formed_session_is_read() {
    let (root, _) = session_root("ok");
    let (ok, stderr) = status(&root);
    // Nobody listens at 127.0.0.1:1: the session was read and the head was asked.
    assert!(!ok);
    assert!(!stderr.contains("refusing"), "{stderr}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_planted_session_latest_is_refused() {
    let (root, _) = session_root("planted");
    // Another directory (say, another user's), with its own address and token.
    let elsewhere = root.with_extension("elsewhere");
    let _ = std::fs::remove_dir_all(&elsewhere);
    mkdir(&elsewhere, 0o700);
    private_file(&elsewhere.join("address"), "127.0.0.1:2");
    private_file(&elsewhere.join("token"), "planted");
    std::fs::remove_file(root.join("session_latest")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, root.join("session_latest")).unwrap();
    assert_refused(&root, "points outside");
    std::fs::remove_dir_all(&root).unwrap();
    std::fs::remove_dir_all(&elsewhere).unwrap();
}

#[test]
fn a_symlinked_token_or_address_is_refused() {
    let (root, dir) = session_root("symlink");
    let target = root.join("planted-address");
    private_file(&target, "127.0.0.1:3");
    std::fs::remove_file(dir.join("address")).unwrap();
    std::os::unix::fs::symlink(&target, dir.join("address")).unwrap();
    assert_refused(&root, "symbolic link");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_world_writable_session_dir_or_root_is_refused() {
    let (root, dir) = session_root("writable");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    assert_refused(&root, "others may write");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o1777)).unwrap();
    assert_refused(&root, "others may write");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_token_others_may_read_is_refused() {
    let (root, dir) = session_root("readable");
    std::fs::set_permissions(dir.join("token"), std::fs::Permissions::from_mode(0o644)).unwrap();
    // The address file is fine; the token is not.
    assert_refused(&root, "group or others");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_foreign_owned_session_dir_is_refused() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only root can make a directory another user owns");
        return;
    }
    let (root, dir) = session_root("foreign");
    let nobody = 65534;
    std::os::unix::fs::chown(&dir, Some(nobody), Some(nobody)).unwrap();
    assert_refused(&root, "belongs to uid 65534");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn start_refuses_a_world_writable_root() {
    let root = std::env::temp_dir().join(format!("manta-sess-start-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    mkdir(&root, 0o777);
    let out = Command::new("timeout")
        .arg("30")
        .arg(manta_bin())
        .args([
            "start",
            "--head",
            "--port",
            "0",
            "--num-cpus",
            "1",
            "--block",
        ])
        .env("MANTA_SESSION_ROOT", &root)
        .env_remove("MANTA_SESSION_DIR")
        .env_remove("MANTA_ADDRESS")
        .env_remove("MANTA_TOKEN")
        .output()
        .expect("running manta");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "start must refuse: {stderr}");
    assert!(stderr.contains("others may write"), "{stderr}");
    std::fs::remove_dir_all(&root).unwrap();
}
