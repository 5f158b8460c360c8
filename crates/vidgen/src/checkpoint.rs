//! Model folders in the diffusers layout: finding them, reading their configs, and loading
//! their weights tensor by tensor with a record of which tensors were used.
//!
//! ```text
//! DIR/model_index.json            `_class_name` names the pipeline, hence the family
//! DIR/transformer/config.json     + *.safetensors (or sharded, with *.safetensors.index.json)
//! DIR/vae/…  DIR/text_encoder/…  DIR/tokenizer/tokenizer.json  DIR/scheduler/scheduler_config.json
//! ```

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// What a model folder must hold, for error messages.
const LAYOUT_HINT: &str = "a model folder is a diffusers pipeline folder with model_index.json, \
     transformer/, vae/, text_encoder/, tokenizer/ and scheduler/ (or a Hugging Face cache folder \
     models--ORG--NAME holding such a snapshot)";

/// Resolves `path` to the folder holding `model_index.json`: the folder itself, or, for a
/// Hugging Face cache folder (`models--org--name`), the snapshot `refs/main` points at (or the
/// only snapshot). Nothing is downloaded.
pub fn resolve_model_dir(path: &Path) -> Result<PathBuf> {
    if !path.exists() {
        return Err(Error::NotAModel {
            path: path.to_path_buf(),
            reason: format!("no such file or folder; {LAYOUT_HINT}"),
        });
    }
    if !path.is_dir() {
        return Err(Error::NotAModel {
            path: path.to_path_buf(),
            reason: format!("not a folder; {LAYOUT_HINT}"),
        });
    }
    if path.join("model_index.json").is_file() {
        return Ok(path.to_path_buf());
    }
    let snapshots = path.join("snapshots");
    if snapshots.is_dir() {
        let by_ref = std::fs::read_to_string(path.join("refs").join("main"))
            .ok()
            .map(|hash| snapshots.join(hash.trim()))
            .filter(|dir| dir.join("model_index.json").is_file());
        if let Some(dir) = by_ref {
            return Ok(dir);
        }
        let candidates: Vec<PathBuf> = std::fs::read_dir(&snapshots)
            .map_err(|e| Error::io(&snapshots, e))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|dir| dir.join("model_index.json").is_file())
            .collect();
        if let [only] = candidates.as_slice() {
            return Ok(only.clone());
        }
        return Err(Error::NotAModel {
            path: path.to_path_buf(),
            reason: format!(
                "a Hugging Face cache folder with {} complete snapshots and no usable refs/main; \
                 pass the snapshot folder itself",
                candidates.len()
            ),
        });
    }
    Err(Error::NotAModel {
        path: path.to_path_buf(),
        reason: format!("no model_index.json; {LAYOUT_HINT}"),
    })
}

/// Reads and parses a JSON file, with errors that name the file.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::BadConfig {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The `_class_name` of a `model_index.json` / `config.json` / `scheduler_config.json`.
pub fn class_name(path: &Path) -> Result<String> {
    let value: serde_json::Value = read_json(path)?;
    value
        .get("_class_name")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .ok_or_else(|| Error::BadConfig {
            path: path.to_path_buf(),
            reason: "no `_class_name` string".into(),
        })
}

/// The safetensors files of one component folder: the shards an index names, else every
/// `*.safetensors` file in it.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .collect();
    let index = entries.iter().find(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".safetensors.index.json"))
    });
    let files: Vec<PathBuf> = if let Some(index) = index {
        let value: serde_json::Value = read_json(index)?;
        let map = value
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::BadConfig {
                path: index.clone(),
                reason: "no `weight_map` object".into(),
            })?;
        let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
        shards.into_iter().map(|s| dir.join(s)).collect()
    } else {
        let mut files: Vec<PathBuf> = entries
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        files.sort();
        files
    };
    if files.is_empty() {
        return Err(Error::BadWeights {
            path: dir.to_path_buf(),
            reason: "no *.safetensors file (pickle .bin checkpoints are not read)".into(),
        });
    }
    for file in &files {
        if !file.is_file() {
            return Err(Error::BadWeights {
                path: file.clone(),
                reason: "listed in the shard index but missing".into(),
            });
        }
    }
    Ok(files)
}

/// The weights of one component, read tensor by tensor from their safetensors files when the
/// model asks for them, recording which were used so that unused checkpoint tensors can be
/// reported by name after loading.
///
/// Tensors are read with plain positioned reads rather than through a memory map: candle's CPU
/// tensors own their memory, so a mapped file would be copied anyway, and while the map is
/// alive its touched pages count once more in the process's resident memory — twice the
/// model's size at load. Reading one tensor at a time keeps the peak at the model plus one
/// tensor; the kernel's page cache still makes a second load cheap.
#[derive(Clone)]
pub struct Weights {
    inner: Arc<TrackedTensors>,
    dtype: DType,
    device: Device,
}

struct TrackedTensors {
    files: Vec<SafetensorsFile>,
    /// Tensor name → (file index, entry).
    index: HashMap<String, (usize, TensorEntry)>,
    used: Mutex<HashSet<String>>,
}

/// One tensor's place in its file.
#[derive(Debug, Clone)]
struct TensorEntry {
    dtype: DType,
    shape: Vec<usize>,
    /// Byte range relative to the start of the data section.
    start: u64,
    end: u64,
}

struct SafetensorsFile {
    path: PathBuf,
    file: Mutex<File>,
    data_start: u64,
}

/// Header limit, as the safetensors format sets it.
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Reads and checks a safetensors header: every tensor's dtype, shape and byte range, all
/// inside the file. A short file is reported as truncated.
fn read_header(path: &Path) -> Result<(SafetensorsFile, Vec<(String, TensorEntry)>)> {
    let bad = |reason: String| Error::BadWeights {
        path: path.to_path_buf(),
        reason: format!("not a readable safetensors file (truncated or corrupt?): {reason}"),
    };
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes)
        .map_err(|_| bad(format!("{file_len} bytes, shorter than a header")))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_BYTES || 8 + header_len > file_len {
        return Err(bad(format!(
            "header of {header_len} bytes in a file of {file_len}"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)
        .map_err(|e| bad(format!("reading the header: {e}")))?;
    let header: HashMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header is not JSON: {e}")))?;
    let data_start = 8 + header_len;
    let data_len = file_len - data_start;
    let mut entries = Vec::with_capacity(header.len());
    for (name, info) in header {
        if name == "__metadata__" {
            continue;
        }
        let entry: RawEntry =
            serde_json::from_value(info).map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
        let dtype = safetensors_dtype(&entry.dtype).ok_or_else(|| {
            bad(format!(
                "tensor `{name}` has unsupported dtype {}",
                entry.dtype
            ))
        })?;
        let [start, end] = entry.data_offsets;
        let bytes = entry.shape.iter().product::<usize>() as u64 * dtype.size_in_bytes() as u64;
        if end < start || end - start != bytes {
            return Err(bad(format!(
                "tensor `{name}`: byte range {start}..{end} for {bytes} bytes"
            )));
        }
        if end > data_len {
            return Err(bad(format!(
                "tensor `{name}` ends at byte {end} of a data section of {data_len}"
            )));
        }
        entries.push((
            name,
            TensorEntry {
                dtype,
                shape: entry.shape,
                start,
                end,
            },
        ));
    }
    Ok((
        SafetensorsFile {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            data_start,
        },
        entries,
    ))
}

#[derive(serde::Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

fn safetensors_dtype(name: &str) -> Option<DType> {
    Some(match name {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::F64,
        "I64" => DType::I64,
        "U32" => DType::U32,
        "U8" => DType::U8,
        _ => return None,
    })
}

impl SafetensorsFile {
    fn read(&self, entry: &TensorEntry) -> std::io::Result<Vec<u8>> {
        let mut bytes = vec![0u8; (entry.end - entry.start) as usize];
        let mut file = self.file.lock().expect("weights file lock poisoned");
        file.seek(SeekFrom::Start(self.data_start + entry.start))?;
        file.read_exact(&mut bytes)?;
        Ok(bytes)
    }
}

impl Weights {
    /// Opens every weight file of the component folder `dir`, checking that each is a complete
    /// safetensors file. Tensors load as `dtype` on `device` when the model asks for them.
    pub fn open(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let files = weight_files(dir)?;
        Self::open_files(&files, dtype, device)
    }

    /// Opens the given safetensors files as one set of weights.
    pub fn open_files(paths: &[PathBuf], dtype: DType, device: &Device) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut index = HashMap::new();
        for path in paths {
            let (file, entries) = read_header(path)?;
            for (name, entry) in entries {
                index.insert(name, (files.len(), entry));
            }
            files.push(file);
        }
        Ok(Self {
            inner: Arc::new(TrackedTensors {
                files,
                index,
                used: Mutex::new(HashSet::new()),
            }),
            dtype,
            device: device.clone(),
        })
    }

    /// A `VarBuilder` over these weights (records every tensor it hands out).
    pub fn var_builder(&self) -> VarBuilder<'static> {
        let backend: Box<dyn SimpleBackend> = Box::new(TrackedBackend(self.inner.clone()));
        VarBuilder::from_backend(backend, self.dtype, self.device.clone())
    }

    /// Names of all tensors in the files, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.index.keys().cloned().collect();
        names.sort();
        names
    }

    /// Names in the files that the model never asked for, sorted.
    pub fn unused(&self) -> Vec<String> {
        let used = self.inner.used.lock().expect("weights lock poisoned");
        self.names()
            .into_iter()
            .filter(|n| !used.contains(n))
            .collect()
    }

    /// The dtype most of the parameters are stored in, if there are any.
    pub fn stored_dtype(&self) -> Option<DType> {
        let mut counts: HashMap<DType, usize> = HashMap::new();
        for (_, entry) in self.inner.index.values() {
            *counts.entry(entry.dtype).or_default() += entry.shape.iter().product::<usize>();
        }
        counts.into_iter().max_by_key(|&(_, n)| n).map(|(d, _)| d)
    }

    /// Total number of parameters stored.
    pub fn parameter_count(&self) -> usize {
        self.inner
            .index
            .values()
            .map(|(_, e)| e.shape.iter().product::<usize>())
            .sum()
    }
}

struct TrackedBackend(Arc<TrackedTensors>);

impl TrackedBackend {
    fn entry(&self, name: &str) -> candle_core::Result<&(usize, TensorEntry)> {
        self.0
            .index
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("missing weight `{name}`")))
    }

    fn load(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let (file_index, entry) = self.entry(name)?;
        let file = &self.0.files[*file_index];
        let bytes = file.read(entry).map_err(|e| {
            candle_core::Error::Msg(format!(
                "reading `{name}` from {}: {e}",
                file.path.display()
            ))
        })?;
        let tensor = Tensor::from_raw_buffer(&bytes, entry.dtype, &entry.shape, &Device::Cpu)?;
        drop(bytes);
        self.0
            .used
            .lock()
            .expect("weights lock poisoned")
            .insert(name.to_owned());
        tensor.to_dtype(dtype)?.to_device(dev)
    }
}

impl SimpleBackend for TrackedBackend {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        // Check the shape from the header before reading any data.
        let (_, entry) = self.entry(name)?;
        if entry.shape.as_slice() != shape.dims() {
            candle_core::bail!(
                "weight `{name}` has shape {:?} but this model config needs {:?}",
                entry.shape,
                shape.dims()
            )
        }
        self.load(name, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.index.contains_key(name)
    }
}

/// Saves `tensors` as a safetensors file at `path`: written under a temporary name in the same
/// folder and renamed, so a crash never leaves half a file under the final name. The file is
/// made readable by all (0644, what a default umask gives a new file): candle's writer creates
/// it private (0600), which would keep a model folder from being shared or served by another
/// user.
pub fn save_safetensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(name);
    let written = candle_core::safetensors::save(tensors, &tmp)
        .map_err(Error::from)
        .and_then(|()| readable_by_all(&tmp))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(unix)]
fn readable_by_all(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| Error::io(path, e))
}

#[cfg(not(unix))]
fn readable_by_all(_: &Path) -> Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_weights(dir: &Path) -> PathBuf {
        let file = dir.join("model.safetensors");
        let a = Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
        candle_core::safetensors::save(
            &[("a".to_string(), a), ("b".to_string(), b)]
                .into_iter()
                .collect(),
            &file,
        )
        .unwrap();
        file
    }

    #[test]
    fn saved_weights_are_whole_and_readable_by_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let a = Tensor::arange(0f32, 6.0, &Device::Cpu).unwrap();
        let tensors: HashMap<String, Tensor> = [("a".to_string(), a)].into_iter().collect();
        save_safetensors(&path, &tensors).unwrap();
        let back = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        assert_eq!(
            back["a"].to_vec1::<f32>().unwrap(),
            [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
        );
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file is left: {names:?}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o644);
        }
        // A folder that is not there: an error, and nothing left behind.
        assert!(save_safetensors(&dir.path().join("no/such.safetensors"), &tensors).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn unused_and_missing_weights_are_named() {
        let dir = tempfile::tempdir().unwrap();
        write_weights(dir.path());
        let weights = Weights::open(dir.path(), DType::F32, &Device::Cpu).unwrap();
        let vb = weights.var_builder();
        vb.get((2, 3), "a").unwrap();
        assert_eq!(weights.unused(), vec!["b".to_string()]);
        let err = vb.get(5, "c").unwrap_err().to_string();
        assert!(err.contains("missing weight `c`"), "{err}");
        let err = vb.get((3, 2), "a").unwrap_err().to_string();
        assert!(err.contains("`a` has shape [2, 3]"), "{err}");
    }

    #[test]
    fn sharded_weights_load_through_their_index() {
        let dir = tempfile::tempdir().unwrap();
        let save = |name: &str, tensor: Tensor, file: &str| {
            candle_core::safetensors::save(
                &[(name.to_string(), tensor)].into_iter().collect(),
                dir.path().join(file),
            )
            .unwrap();
        };
        save(
            "a",
            Tensor::ones(2, DType::F32, &Device::Cpu).unwrap(),
            "m-00001-of-00002.safetensors",
        );
        save(
            "b",
            Tensor::zeros(3, DType::BF16, &Device::Cpu).unwrap(),
            "m-00002-of-00002.safetensors",
        );
        // A stray file the index does not name must not be read.
        save(
            "c",
            Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap(),
            "stray.safetensors",
        );
        std::fs::write(
            dir.path().join("m.safetensors.index.json"),
            r#"{"metadata": {}, "weight_map": {"a": "m-00001-of-00002.safetensors", "b": "m-00002-of-00002.safetensors"}}"#,
        )
        .unwrap();
        let weights = Weights::open(dir.path(), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(weights.names(), vec!["a".to_string(), "b".to_string()]);
        // bf16 on disk, f32 as asked.
        let b = weights.var_builder().get(3, "b").unwrap();
        assert_eq!(b.dtype(), DType::F32);
        std::fs::remove_file(dir.path().join("m-00002-of-00002.safetensors")).unwrap();
        let err = Weights::open(dir.path(), DType::F32, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("listed in the shard index but missing"),
            "{err}"
        );
    }

    #[test]
    fn truncated_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_weights(dir.path());
        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(&file, &bytes[..bytes.len() - 5]).unwrap();
        let err = Weights::open(dir.path(), DType::F32, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("truncated or corrupt"), "{err}");
        assert!(err.contains("model.safetensors"), "{err}");
    }

    #[test]
    fn hugging_face_cache_folder_resolves_to_its_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let snap = dir.path().join("snapshots").join("abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join("model_index.json"), "{}").unwrap();
        std::fs::create_dir_all(dir.path().join("refs")).unwrap();
        std::fs::write(dir.path().join("refs").join("main"), "abc123\n").unwrap();
        assert_eq!(resolve_model_dir(dir.path()).unwrap(), snap);
        let err = resolve_model_dir(&dir.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no such file or folder"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        let err = resolve_model_dir(empty.path()).unwrap_err().to_string();
        assert!(err.contains("no model_index.json"), "{err}");
    }
}
