//! Session directories, trusted only when they are ours: the files `manta start --head` leaves
//! for commands and drivers of the same host (`address`, `token`, `logs/`), and the checks
//! every reader makes before believing them.
//!
//! The token is a capability to run code as the cluster's user, so a session directory is
//! treated like `~/.ssh`:
//!
//! 1. The session root (`$MANTA_SESSION_ROOT`, default `/tmp/manta`) is created `0700`; an
//!    existing one must be a real directory (not a symlink) owned by this user and writable
//!    by nobody else, or every command refuses it with an error naming it.
//! 2. A session directory is created with `mkdir` mode `0700`, which fails on anything already
//!    there (a planted directory or symlink): the `O_EXCL` of directories.
//! 3. Private files (`token`, `address`) are created `0600` with `O_CREAT | O_EXCL |
//!    O_NOFOLLOW`, so a planted symlink is never followed and an existing file is never
//!    reused blindly (an old one of ours is removed first; anything else is refused).
//! 4. Readers follow `session_latest` only when it is a symlink in a checked root to a
//!    checked directory of that root, and open private files with `O_NOFOLLOW`, checking that
//!    the file is a regular file owned by this user with no group or other access.
//! 5. `manta stop` (and the head, when it exits) removes the token and address: no token is
//!    left on disk once its cluster is gone.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// This process's effective user id.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn refused(path: &Path, why: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("refusing {}: {why}", path.display()),
    )
}

/// Checks that `dir` is a directory (not a symlink) owned by this user that nobody else may
/// write (steps 1 and 4).
pub fn check_dir(dir: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
    if meta.file_type().is_symlink() {
        return Err(refused(dir, "it is a symbolic link"));
    }
    if !meta.is_dir() {
        return Err(refused(dir, "it is not a directory"));
    }
    if meta.uid() != euid() {
        return Err(refused(
            dir,
            format_args!(
                "it belongs to uid {}, not to this user ({})",
                meta.uid(),
                euid()
            ),
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(refused(
            dir,
            format_args!("others may write to it (mode {:o})", meta.mode() & 0o7777),
        ));
    }
    Ok(())
}

/// Creates `root` (mode `0700`) if it is missing, then checks it (step 1).
pub fn ensure_root(root: &Path) -> io::Result<()> {
    match DirBuilder::new().recursive(true).mode(0o700).create(root) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", root.display()))),
    }
    check_dir(root)
}

/// Creates the fresh directory `dir` (mode `0700`) and its `logs/`, failing if anything is
/// already there (step 2): a `mkdir` that succeeds made a directory of ours. (The session
/// root is checked by [`ensure_root`] first.)
pub fn create_dir(dir: &Path) -> io::Result<()> {
    let mk = |d: &Path| {
        DirBuilder::new()
            .mode(0o700)
            .create(d)
            .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", d.display())))
    };
    mk(dir)?;
    mk(&dir.join("logs"))
}

/// Writes `contents` to a new private file `path` (mode `0600`, `O_EXCL`, `O_NOFOLLOW`; step
/// 3). An old regular file of ours there is replaced; a symlink or another's file is refused.
pub fn write_private(path: &Path, contents: &str) -> io::Result<()> {
    write_private_bytes(path, contents.as_bytes())
}

/// [`write_private`] of bytes.
pub(crate) fn write_private_bytes(path: &Path, contents: &[u8]) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(refused(path, "it is a symbolic link"));
        }
        Ok(meta) if !meta.is_file() || meta.uid() != euid() => {
            return Err(refused(path, "it exists and is not a file of this user"));
        }
        Ok(_) => std::fs::remove_file(path)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    create_private(path, contents)
}

/// Writes `contents` to a private file `path` that must not exist yet (mode `0600`,
/// `O_EXCL`, `O_NOFOLLOW`): `AlreadyExists` if anything is there, a symlink included.
pub fn create_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("writing {}: {e}", path.display())))?;
    f.write_all(contents)
}

/// Reads a private file: opened without following a symlink, it must be a regular file owned
/// by this user with no group or other access (step 4). Returns its trimmed contents.
pub fn read_private(path: &Path) -> io::Result<String> {
    let bytes = read_private_bytes(path, 64 << 10)?;
    let s = String::from_utf8(bytes).map_err(|_| refused(path, "it is not text"))?;
    Ok(s.trim().to_owned())
}

/// [`read_private`] of bytes: at most `limit` of them (a longer file is an error).
pub(crate) fn read_private_bytes(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let f = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                refused(path, "it is a symbolic link")
            } else {
                io::Error::new(e.kind(), format!("{}: {e}", path.display()))
            }
        })?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(refused(path, "it is not a regular file"));
    }
    if meta.uid() != euid() {
        return Err(refused(
            path,
            format_args!("it belongs to uid {}, not to this user", meta.uid()),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(refused(
            path,
            format_args!(
                "group or others may access it (mode {:o}; want 600)",
                meta.mode() & 0o7777
            ),
        ));
    }
    let mut bytes = Vec::new();
    (&f).take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(refused(
            path,
            format_args!("it is larger than {limit} bytes"),
        ));
    }
    Ok(bytes)
}

/// The directory `<root>/session_latest` points at, checked (step 4).
pub fn latest(root: &Path) -> io::Result<PathBuf> {
    check_dir(root)?;
    let link = root.join("session_latest");
    let meta = std::fs::symlink_metadata(&link)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", link.display())))?;
    if !meta.file_type().is_symlink() {
        return Err(refused(
            &link,
            "it is not the symbolic link `manta start` makes",
        ));
    }
    let target = std::fs::read_link(&link)?;
    let target = if target.is_absolute() {
        target
    } else {
        root.join(target)
    };
    if target.parent() != Some(root) {
        return Err(refused(
            &link,
            format_args!(
                "it points outside {} ({})",
                root.display(),
                target.display()
            ),
        ));
    }
    check_dir(&target)?;
    Ok(target)
}

/// Points `<root>/session_latest` at `dir` (atomically, by renaming a fresh symlink).
pub fn point_latest(root: &Path, dir: &Path) -> io::Result<()> {
    let latest = root.join("session_latest");
    let tmp = root.join(format!(".session_latest.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(dir, &tmp)?;
    std::fs::rename(&tmp, &latest)
}

/// Removes the session's token and address (step 5); a missing file is no error.
pub fn remove_secrets(dir: &Path) -> io::Result<()> {
    for name in ["token", "address"] {
        match std::fs::remove_file(dir.join(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// The token of the cluster at `address` from the latest session directory under `root`:
/// `Ok(None)` if that session is another cluster's or has no token, an error if the session
/// is not trustworthy (steps 1 and 4).
pub fn token_for(root: &Path, address: &str) -> io::Result<Option<String>> {
    let dir = match latest(root) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let recorded = match read_private(&dir.join("address")) {
        Ok(a) => a,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if recorded != address.trim() {
        return Ok(None);
    }
    match read_private(&dir.join("token")) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "manta-session-test-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        ensure_root(&d).unwrap();
        d
    }

    #[test]
    fn a_session_round_trips_and_stop_removes_the_token() {
        let root = scratch("round");
        let dir = root.join("session_1");
        create_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        write_private(&dir.join("address"), "127.0.0.1:1").unwrap();
        write_private(&dir.join("token"), "secret").unwrap();
        let mode = std::fs::metadata(dir.join("token")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        point_latest(&root, &dir).unwrap();
        assert_eq!(
            token_for(&root, "127.0.0.1:1").unwrap().as_deref(),
            Some("secret")
        );
        assert_eq!(token_for(&root, "127.0.0.1:2").unwrap(), None);
        assert!(
            create_dir(&dir).is_err(),
            "an existing directory is never reused"
        );
        remove_secrets(&dir).unwrap();
        assert_eq!(token_for(&root, "127.0.0.1:1").unwrap(), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn symlinks_and_loose_modes_are_refused() {
        let root = scratch("refuse");
        let dir = root.join("session_1");
        create_dir(&dir).unwrap();
        write_private(&dir.join("address"), "a:1").unwrap();
        // A planted symlink in place of the token: never followed, read or written through.
        let elsewhere = root.join("elsewhere");
        std::fs::write(&elsewhere, "planted").unwrap();
        std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.join("token")).unwrap();
        point_latest(&root, &dir).unwrap();
        let e = token_for(&root, "a:1").unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let e = write_private(&dir.join("token"), "x").unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "planted");
        // A token others may read.
        std::fs::remove_file(dir.join("token")).unwrap();
        write_private(&dir.join("token"), "t").unwrap();
        std::fs::set_permissions(dir.join("token"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let e = token_for(&root, "a:1").unwrap_err();
        assert!(e.to_string().contains("group or others"), "{e}");
        // A world-writable session directory.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = token_for(&root, "a:1").unwrap_err();
        assert!(e.to_string().contains("others may write"), "{e}");
        // session_latest pointing outside the root.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        point_latest(&root, Path::new("/tmp")).unwrap();
        let e = token_for(&root, "a:1").unwrap_err();
        assert!(e.to_string().contains("outside"), "{e}");
        // A symlinked root.
        let link_root = root.with_extension("link");
        let _ = std::fs::remove_file(&link_root);
        std::os::unix::fs::symlink(&root, &link_root).unwrap();
        assert!(check_dir(&link_root).is_err());
        std::fs::remove_file(&link_root).unwrap();
        std::fs::remove_dir_all(&root).unwrap();
    }
}
