//! Files that appear whole or not at all: written under `NAME.partial` and renamed to `NAME`
//! once complete and synced, so an interrupted write (Ctrl-C, a full disk, a crash) never
//! leaves a file that looks finished. A writer dropped before `commit` removes its partial file.

use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub struct AtomicFile {
    path: PathBuf,
    partial: PathBuf,
    out: Option<BufWriter<File>>,
}

impl std::fmt::Debug for AtomicFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AtomicFile({})", self.path.display())
    }
}

/// `NAME.partial` beside `path`.
pub fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

impl AtomicFile {
    pub fn create(path: &Path) -> Result<AtomicFile> {
        let partial = partial_path(path);
        let file = File::create(&partial).map_err(|source| Error::Io {
            path: partial.clone(),
            source,
        })?;
        Ok(AtomicFile {
            path: path.to_path_buf(),
            partial,
            out: Some(BufWriter::with_capacity(8 << 20, file)),
        })
    }

    fn out(&mut self) -> &mut BufWriter<File> {
        self.out.as_mut().expect("written before commit")
    }

    /// Flush, sync and rename to the final name; returns the file's length.
    pub fn commit(mut self) -> Result<u64> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        let mut out = self.out.take().expect("committed once");
        out.flush().map_err(io(&self.partial))?;
        let mut file = out.into_inner().map_err(|e| Error::Io {
            path: self.partial.clone(),
            source: e.into_error(),
        })?;
        let len = file.seek(SeekFrom::End(0)).map_err(io(&self.partial))?;
        file.sync_all().map_err(io(&self.partial))?;
        std::fs::rename(&self.partial, &self.path).map_err(io(&self.path))?;
        Ok(len)
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out().write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.out().write_all(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out().flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

/// Write `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.write_all(bytes).map_err(|source| Error::Io {
        path: partial_path(path),
        source,
    })?;
    f.commit().map(|_| ())
}
