//! GGUF split sets as llama.cpp's `gguf-split` writes them: `NAME-00001-of-00005.gguf` ...,
//! each part a GGUF of its own carrying `split.no` (0-based), `split.count` and
//! `split.tensors.count`; the first part holds the model's metadata. Any part opens the set.

use std::path::{Path, PathBuf};

use crate::gguf::{GgmlType, GgufFile, GgufWriter, Value};
use crate::{Error, Result};

pub const KEY_NO: &str = "split.no";
pub const KEY_COUNT: &str = "split.count";
pub const KEY_TENSORS: &str = "split.tensors.count";

/// The path of part `no` (0-based) of `count` beside `prefix` (`NAME`), as llama.cpp names it.
pub fn split_path(prefix: &Path, no: usize, count: usize) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(format!("-{:05}-of-{:05}.gguf", no + 1, count));
    PathBuf::from(s)
}

/// `(prefix, part index, count)` when `path` is named like a split part.
fn parse_split_name(path: &Path) -> Option<(PathBuf, usize, usize)> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".gguf")?;
    let (head, count) = stem.rsplit_once("-of-")?;
    let (prefix, no) = head.rsplit_once('-')?;
    let digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(count) || !digits(no) {
        return None;
    }
    let (no, count): (usize, usize) = (no.parse().ok()?, count.parse().ok()?);
    if no == 0 || no > count {
        return None;
    }
    Some((path.with_file_name(prefix), no - 1, count))
}

fn number(f: &GgufFile, key: &str) -> Result<Option<usize>> {
    match f.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(|n| Some(n as usize))
            .ok_or_else(|| Error::Gguf {
                path: f.path.clone(),
                reason: format!("metadata '{key}' is {v:?}, not a count"),
            }),
    }
}

impl GgufFile {
    /// A GGUF file, or the whole split set that `path` is a part of.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let first = GgufFile::open_part(path)?;
        let count = number(&first, KEY_COUNT)?.unwrap_or(1);
        if count <= 1 {
            return Ok(first);
        }
        let bad = |path: &Path, reason: String| Error::Gguf {
            path: path.to_path_buf(),
            reason,
        };
        let no = number(&first, KEY_NO)?.unwrap_or(0);
        let Some((prefix, name_no, name_count)) = parse_split_name(path) else {
            return Err(bad(
                path,
                format!(
                    "part {} of a {count}-part split set, but the name does not end in \
                     -{:05}-of-{count:05}.gguf, so the other parts cannot be found",
                    no + 1,
                    no + 1
                ),
            ));
        };
        if (name_no, name_count) != (no, count) {
            return Err(bad(
                path,
                format!(
                    "named part {} of {name_count}, but its metadata says part {} of {count}",
                    name_no + 1,
                    no + 1
                ),
            ));
        }
        let mut parts = Vec::with_capacity(count);
        for i in 0..count {
            let p = split_path(&prefix, i, count);
            let part = if i == no {
                GgufFile::open_part(path)?
            } else if !p.exists() {
                return Err(bad(
                    &p,
                    format!("part {} of {count} of this split set is missing", i + 1),
                ));
            } else {
                GgufFile::open_part(&p)?
            };
            let (pno, pcount) = (number(&part, KEY_NO)?, number(&part, KEY_COUNT)?);
            if pno != Some(i) || pcount != Some(count) {
                return Err(bad(
                    &p,
                    format!(
                        "does not belong to this {count}-part set: its split.no is {pno:?} \
                         and split.count {pcount:?} (expected {i} and {count})"
                    ),
                ));
            }
            parts.push(part);
        }
        let total = number(&parts[0], KEY_TENSORS)?;
        merge(parts, total)
    }
}

/// One `GgufFile` over the parts: the first part's metadata, every part's tensors.
fn merge(parts: Vec<GgufFile>, total: Option<usize>) -> Result<GgufFile> {
    let mut iter = parts.into_iter();
    let mut set = iter.next().expect("a set has parts");
    for (i, part) in iter.enumerate() {
        let i = i + 1;
        for name in part.order {
            let mut t = part.tensors[&name].clone();
            t.part = i;
            if set.tensors.insert(name.clone(), t).is_some() {
                return Err(Error::Gguf {
                    path: part.path.clone(),
                    reason: format!("tensor '{name}' is also in an earlier part of the set"),
                });
            }
            set.order.push(name);
        }
        for (k, v) in part.metadata {
            set.metadata.entry(k).or_insert(v);
        }
        set.maps.extend(part.maps);
        set.parts.extend(part.parts);
    }
    set.metadata.insert(KEY_NO.into(), Value::U16(0));
    if let Some(total) = total.filter(|&n| n != set.tensors.len()) {
        return Err(Error::Gguf {
            path: set.path.clone(),
            reason: format!(
                "the set's {} parts hold {} tensors, but {KEY_TENSORS} says {total}",
                set.parts.len(),
                set.tensors.len()
            ),
        });
    }
    Ok(set)
}

/// Writes one GGUF, or a split set of parts of at most `max_bytes` of tensor data each (as
/// `gguf-split --split-max-size` does: the first part carries the metadata, every part the
/// `split.*` keys, a tensor is never cut). The tensors' data follows through `write_tensor` in
/// the plan's order.
pub struct GgufSplitWriter {
    parts: Vec<GgufWriter>,
    paths: Vec<PathBuf>,
    /// The part of each planned tensor, in order.
    part_of: Vec<usize>,
    next: usize,
}

impl GgufSplitWriter {
    /// `out` is the file (`NAME.gguf`), or with more than one part the name the parts are
    /// numbered after (`NAME-00001-of-0000n.gguf`, ...).
    pub fn create(
        out: &Path,
        metadata: &[(String, Value)],
        plan: Vec<(String, Vec<usize>, GgmlType)>,
        max_bytes: Option<u64>,
    ) -> Result<GgufSplitWriter> {
        let size = |shape: &[usize], ty: GgmlType| {
            let (bl, bb) = ty.block();
            shape.iter().map(|&d| d as u64).product::<u64>() / bl * bb
        };
        let mut part_of = Vec::with_capacity(plan.len());
        let (mut part, mut used) = (0usize, 0u64);
        for (_, shape, ty) in &plan {
            let len = size(shape, *ty);
            if max_bytes.is_some_and(|m| used > 0 && used + len > m) {
                part += 1;
                used = 0;
            }
            used += len;
            part_of.push(part);
        }
        let count = part + 1;
        if count == 1 {
            return Ok(GgufSplitWriter {
                parts: vec![GgufWriter::create(out, metadata, plan)?],
                paths: vec![out.to_path_buf()],
                part_of,
                next: 0,
            });
        }
        let prefix = out.with_extension("");
        let mut plans: Vec<Vec<(String, Vec<usize>, GgmlType)>> = vec![Vec::new(); count];
        for (t, p) in plan.into_iter().zip(&part_of) {
            plans[*p].push(t);
        }
        let total = part_of.len();
        let (mut parts, mut paths) = (Vec::new(), Vec::new());
        for (i, plan) in plans.into_iter().enumerate() {
            let mut meta: Vec<(String, Value)> = if i == 0 {
                metadata.to_vec()
            } else {
                Vec::new()
            };
            meta.push((KEY_NO.into(), Value::U16(i as u16)));
            meta.push((KEY_COUNT.into(), Value::U16(count as u16)));
            meta.push((KEY_TENSORS.into(), Value::I32(total as i32)));
            let path = split_path(&prefix, i, count);
            parts.push(GgufWriter::create(&path, &meta, plan)?);
            paths.push(path);
        }
        Ok(GgufSplitWriter {
            parts,
            paths,
            part_of,
            next: 0,
        })
    }

    /// The files being written: `out`, or the parts.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// The next tensor's data (must match the plan).
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let Some(&p) = self.part_of.get(self.next) else {
            return Err(Error::Gguf {
                path: self.paths[0].clone(),
                reason: format!("tensor '{name}' is not in the plan"),
            });
        };
        self.parts[p].write_tensor(name, data)?;
        self.next += 1;
        Ok(())
    }

    /// Finish every part; returns each part's path and size.
    pub fn finish(self) -> Result<Vec<(PathBuf, u64)>> {
        self.parts
            .into_iter()
            .zip(self.paths)
            .map(|(w, p)| Ok((p, w.finish()?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_names_round_trip() {
        let p = split_path(Path::new("/m/GLM-5.1-IQ4_XS"), 2, 9);
        assert_eq!(p, Path::new("/m/GLM-5.1-IQ4_XS-00003-of-00009.gguf"));
        assert_eq!(
            parse_split_name(&p),
            Some((PathBuf::from("/m/GLM-5.1-IQ4_XS"), 2, 9))
        );
        for bad in [
            "/m/a.gguf",
            "/m/a-0001-of-00002.gguf",
            "/m/a-00003-of-00002.gguf",
        ] {
            assert_eq!(parse_split_name(Path::new(bad)), None, "{bad}");
        }
    }
}
