//! The data directory: where keys, certificates and settings live.
//!
//! Files holding secrets are created with owner-only permissions and
//! written atomically (temporary file, then rename), so a crash or a full
//! disk never leaves half a key behind.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The data directory to use: the one given, or `$XDG_DATA_HOME/burrow`,
/// or `~/.local/share/burrow`.
pub fn resolve(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(d) = given {
        return Ok(d);
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("burrow"));
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/share/burrow")),
        None => bail!("no data directory: pass --data-dir or set BURROW_DATA_DIR"),
    }
}

/// Creates `dir` (and parents) with owner-only permissions if missing.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))
}

/// Writes `data` to `path` atomically with owner-only permissions.
pub fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let write = || -> std::io::Result<()> {
        let mut f = opts.open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        anyhow::Error::new(e).context(format!("cannot write {}", path.display()))
    })
}

/// Reads a file, with its path in the error.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_owner_only_and_atomic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("a/b");
        ensure_dir(&sub).expect("mkdir");
        let f = sub.join("secret");
        write_private(&f, b"one").expect("write");
        write_private(&f, b"two").expect("overwrite");
        assert_eq!(read(&f).expect("read"), b"two");
        assert!(!f.with_extension("tmp").exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&f).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let mode = fs::metadata(&sub).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
    }

    #[test]
    fn unwritable_location_is_a_clear_error() {
        let err = write_private(Path::new("/proc/burrow-no/such"), b"x").expect_err("must fail");
        assert!(err.to_string().contains("/proc/burrow-no/such"), "{err}");
    }
}
