//! Writing outputs so that a crash never leaves a half-written file under the final name.
//!
//! Files are written to a temporary file in the destination folder (so the final rename
//! stays on one file system), synced, and renamed over the final name; on any error the
//! temporary file is removed. Folders are built the same way and swapped in.

#[cfg(unix)]
use std::fs::Permissions;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::{io_error, Error, Result};

/// The folder `path` lives in (`.` for a bare file name).
pub(crate) fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Fails with [`Error::MissingFolder`] unless the folder that should hold `path` exists.
pub(crate) fn check_parent(path: &Path) -> Result<()> {
    let folder = parent_of(path);
    if folder.is_dir() {
        Ok(())
    } else {
        Err(Error::MissingFolder {
            path: path.to_path_buf(),
            folder,
        })
    }
}

/// `.NAME.` — the prefix of temporary files and folders made for `path`, hidden and
/// recognisably ours.
fn temp_prefix(path: &Path) -> Result<String> {
    let name = path.file_name().ok_or_else(|| Error::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file"),
    })?;
    Ok(format!(".{}.", name.to_string_lossy()))
}

/// A tempfile builder for `.NAME.XXXXXX.tmp`. The mode bits are asked for at creation and
/// the process umask narrows them, exactly as for `File::create` (tempfile's own default,
/// 0600, would make outputs private).
fn temp_builder(prefix: &str, mode: u32) -> tempfile::Builder<'_, 'static> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(Permissions::from_mode(mode));
    }
    #[cfg(not(unix))]
    let _ = mode;
    builder
}

/// Writes what `fill` produces to `path` through a temporary file in the same folder.
pub(crate) fn write_file(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<&File>) -> Result<()>,
) -> Result<()> {
    check_parent(path)?;
    let mut temp = temp_builder(&temp_prefix(path)?, 0o666)
        .tempfile_in(parent_of(path))
        .map_err(io_error(path))?;
    {
        let mut writer = BufWriter::new(temp.as_file_mut() as &File);
        fill(&mut writer)?;
        writer.flush().map_err(io_error(path))?;
    }
    temp.as_file().sync_all().map_err(io_error(path))?;
    temp.persist(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

/// Writes `bytes` to `path` atomically.
pub(crate) fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_file(path, |writer| {
        writer.write_all(bytes).map_err(io_error(path))
    })
}

/// Builds the folder `path` with `fill` (which gets a temporary folder next to it) and swaps
/// it into place, replacing any earlier folder at `path` whole (the caller decides whether
/// that folder may go).
pub(crate) fn write_dir(path: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    check_parent(path)?;
    let prefix = temp_prefix(path)?;
    let temp = temp_builder(&prefix, 0o777)
        .tempdir_in(parent_of(path))
        .map_err(io_error(path))?;
    fill(temp.path())?;

    // A rename cannot replace a non-empty folder: move the old one aside first, then drop it.
    let old = if path.exists() {
        let old = temp_builder(&prefix, 0o700)
            .tempdir_in(parent_of(path))
            .map_err(io_error(path))?
            .keep();
        fs::rename(path, &old).map_err(io_error(path))?;
        Some(old)
    } else {
        None
    };
    let built = temp.keep();
    if let Err(source) = fs::rename(&built, path) {
        let _ = fs::remove_dir_all(&built);
        if let Some(old) = &old {
            let _ = fs::rename(old, path);
        }
        return Err(Error::Io {
            path: path.to_path_buf(),
            source,
        });
    }
    if let Some(old) = old {
        fs::remove_dir_all(&old).map_err(io_error(&old))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_fill_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        let result = write_file(&path, |_| Err(Error::InvalidFrames("boom".into())));
        assert!(result.is_err());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        let result = write_dir(&dir.path().join("frames"), |_| {
            Err(Error::InvalidFrames("boom".into()))
        });
        assert!(result.is_err());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn output_is_readable_by_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        write_bytes(&path, b"abc").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"abc");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_ne!(
                mode & 0o044,
                0,
                "mode {mode:o}: tempfile's 0600 leaked through"
            );
        }
    }
}
