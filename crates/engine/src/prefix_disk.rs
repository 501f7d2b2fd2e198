//! The prefix cache on disk: long prompts (an agent's system prompt and tool list, ~34K tokens
//! for Claude Code) keep their KV cache across restarts and evictions, so a later request that
//! starts the same way reads it back instead of recomputing it.
//!
//! One file per entry in the cache folder: a header (magic, the model's identity, the token
//! ids), then the model's cache (`BatchModel::write_cache`). Files are written by a thread of
//! their own to a temporary name and renamed when complete, so a crash never leaves a file
//! that looks whole. Entries of another model (identity differs) are ignored; the folder is
//! kept under its byte budget by dropping the least recently used entries.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::SystemTime;

const MAGIC: &[u8; 8] = b"GLM5KV01";
/// At most this many prompt tokens in one entry's header (a corrupt header fails instead).
const MAX_TOKENS: u64 = 1 << 26;

/// Where and how much.
#[derive(Debug, Clone)]
pub struct DiskConfig {
    pub dir: PathBuf,
    /// Identifies the model file(s) and cache format; entries with another are ignored.
    pub model_id: String,
    /// Bytes the folder may hold.
    pub budget_bytes: u64,
    /// Entries shorter than this are not written (a short prompt is cheap to recompute).
    pub min_tokens: usize,
}

#[derive(Debug, Clone)]
struct Entry {
    tokens: Vec<u32>,
    path: PathBuf,
    bytes: u64,
    used: SystemTime,
}

/// A cache to write, handed to the writer thread.
type Job = Box<dyn FnOnce(&mut dyn Write) -> std::io::Result<bool> + Send>;

pub struct DiskPrefixes {
    cfg: DiskConfig,
    entries: Vec<Entry>,
    writer: mpsc::Sender<(PathBuf, Vec<u32>, Job)>,
}

fn header(model_id: &str, tokens: &[u32]) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend((model_id.len() as u64).to_le_bytes());
    h.extend(model_id.as_bytes());
    h.extend((tokens.len() as u64).to_le_bytes());
    for t in tokens {
        h.extend(t.to_le_bytes());
    }
    h
}

/// Read a header; `None` when the file is not an entry of `model_id`.
fn read_header(r: &mut dyn Read, model_id: &str) -> std::io::Result<Option<Vec<u32>>> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    let mut n = [0u8; 8];
    r.read_exact(&mut n)?;
    let id_len = u64::from_le_bytes(n);
    if &magic != MAGIC || id_len != model_id.len() as u64 {
        return Ok(None);
    }
    let mut id = vec![0u8; id_len as usize];
    r.read_exact(&mut id)?;
    if id != model_id.as_bytes() {
        return Ok(None);
    }
    r.read_exact(&mut n)?;
    let count = u64::from_le_bytes(n);
    if count > MAX_TOKENS {
        return Ok(None);
    }
    let mut raw = vec![0u8; 4 * count as usize];
    r.read_exact(&mut raw)?;
    Ok(Some(
        raw.chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    ))
}

/// The file name of an entry: a hash of its tokens (entries of one prompt share it).
fn file_name(model_id: &str, tokens: &[u32]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in model_id
        .bytes()
        .chain(tokens.iter().flat_map(|t| t.to_le_bytes()))
    {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}-{}.kv", tokens.len())
}

impl DiskPrefixes {
    /// Open (or create) the folder and index its entries of this model.
    pub fn open(cfg: DiskConfig) -> std::io::Result<DiskPrefixes> {
        std::fs::create_dir_all(&cfg.dir)?;
        let mut entries = Vec::new();
        for f in std::fs::read_dir(&cfg.dir)? {
            let path = f?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("kv") {
                continue;
            }
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let mut r = BufReader::new(File::open(&path)?);
            if let Ok(Some(tokens)) = read_header(&mut r, &cfg.model_id) {
                entries.push(Entry {
                    tokens,
                    path,
                    bytes: meta.len(),
                    used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
        let (tx, rx) = mpsc::channel::<(PathBuf, Vec<u32>, Job)>();
        let model_id = cfg.model_id.clone();
        std::thread::Builder::new()
            .name("glm5-prefix-disk".into())
            .spawn(move || {
                for (path, tokens, job) in rx {
                    if let Err(e) = write_entry(&path, &model_id, &tokens, job) {
                        eprintln!("glm5: prefix cache: writing {}: {e}", path.display());
                    }
                }
            })?;
        Ok(DiskPrefixes {
            cfg,
            entries,
            writer: tx,
        })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry sharing the longest prefix with `tokens`: (index, tokens in common).
    pub fn best(&self, tokens: &[u32]) -> Option<(usize, usize)> {
        self.entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let common = e
                    .tokens
                    .iter()
                    .zip(tokens)
                    .take_while(|(a, b)| a == b)
                    .count();
                (i, common)
            })
            .filter(|&(_, c)| c > 0)
            .max_by_key(|&(_, c)| c)
    }

    /// Read entry `i`'s cache with `read` (after its header). A file that fails is dropped.
    pub fn load<C>(
        &mut self,
        i: usize,
        read: impl FnOnce(&mut dyn Read) -> std::io::Result<Option<C>>,
    ) -> Option<C> {
        let e = &mut self.entries[i];
        let got = (|| {
            let mut r = BufReader::with_capacity(1 << 20, File::open(&e.path)?);
            match read_header(&mut r, &self.cfg.model_id)? {
                Some(t) if t == e.tokens => read(&mut r),
                _ => Ok(None),
            }
        })();
        match got {
            Ok(Some(c)) => {
                e.used = SystemTime::now();
                let _ = File::options()
                    .append(true)
                    .open(&e.path)
                    .and_then(|f| f.set_modified(e.used));
                Some(c)
            }
            other => {
                if let Err(err) = other {
                    eprintln!(
                        "glm5: prefix cache: {} unreadable ({err}); dropped",
                        e.path.display()
                    );
                }
                let _ = std::fs::remove_file(&e.path);
                self.entries.remove(i);
                None
            }
        }
    }

    /// Forget every entry and delete its file (the caches no longer match the weights).
    pub fn clear(&mut self) {
        for e in self.entries.drain(..) {
            let _ = std::fs::remove_file(&e.path);
        }
    }

    /// Whether `tokens` would be stored: long enough, and not inside an entry already kept.
    pub fn wants(&self, tokens: &[u32]) -> bool {
        tokens.len() >= self.cfg.min_tokens
            && !self
                .entries
                .iter()
                .any(|e| e.tokens.len() >= tokens.len() && e.tokens[..tokens.len()] == tokens[..])
    }

    /// Keep a finished sequence's cache of `tokens` (written in the background). Entries it
    /// extends are dropped; the oldest go while the folder is over budget.
    pub fn store(&mut self, tokens: Vec<u32>, bytes_estimate: u64, write: Job) {
        if !self.wants(&tokens) {
            return;
        }
        let path = self.cfg.dir.join(file_name(&self.cfg.model_id, &tokens));
        self.entries.retain(|e| {
            let redundant =
                e.tokens.len() < tokens.len() && tokens[..e.tokens.len()] == e.tokens[..];
            if redundant {
                let _ = std::fs::remove_file(&e.path);
            }
            !redundant
        });
        self.entries.push(Entry {
            tokens: tokens.clone(),
            path: path.clone(),
            bytes: bytes_estimate,
            used: SystemTime::now(),
        });
        while self.entries.iter().map(|e| e.bytes).sum::<u64>() > self.cfg.budget_bytes
            && self.entries.len() > 1
        {
            let oldest = (0..self.entries.len())
                .min_by_key(|&i| self.entries[i].used)
                .unwrap_or(0);
            let _ = std::fs::remove_file(&self.entries[oldest].path);
            self.entries.remove(oldest);
        }
        if self.entries.iter().any(|e| e.path == path) {
            let _ = self.writer.send((path, tokens, write));
        }
    }
}

fn write_entry(path: &Path, model_id: &str, tokens: &[u32], job: Job) -> std::io::Result<()> {
    let tmp = path.with_extension("kv.tmp");
    let mut w = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
    w.write_all(&header(model_id, tokens))?;
    if !job(&mut w)? {
        drop(w);
        return std::fs::remove_file(&tmp);
    }
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
