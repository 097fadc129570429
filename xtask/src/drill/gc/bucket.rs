//! What the gc drill reads of its bucket: the objects under the trial's prefix by
//! kind, and what each entry references (through cache-s3's own reader, the one gc
//! counts references with).

use cache_core::Digest;
use cache_s3::{EntryReferences, S3Options, S3Storage};
use std::collections::{BTreeMap, BTreeSet};

/// The objects under a prefix, by kind.
#[derive(Debug, Default)]
pub struct Listing {
    /// `blake3:<hex>` of every `entries/<alg>/<hex>`.
    pub entries: BTreeSet<String>,
    /// `packs/<hex>` and `blobs/<alg>/<hex>`.
    pub stored: BTreeSet<String>,
    /// `used/...`, without `used/`.
    pub markers: BTreeSet<String>,
    /// Anything else.
    pub other: Vec<String>,
}

impl Listing {
    /// Sorts object names relative to the prefix.
    pub fn of(names: &[String]) -> Self {
        let mut l = Listing::default();
        for name in names {
            let (kind, rest) = name.split_once('/').unwrap_or((name, ""));
            match kind {
                "entries" => match rest.split_once('/') {
                    Some((alg, hex)) => {
                        l.entries.insert(format!("{alg}:{hex}"));
                    }
                    None => l.other.push(name.clone()),
                },
                "packs" | "blobs" => {
                    l.stored.insert(name.clone());
                }
                "used" => {
                    l.markers.insert(rest.to_owned());
                }
                _ => l.other.push(name.clone()),
            }
        }
        l
    }

    pub fn len(&self) -> usize {
        self.entries.len() + self.stored.len() + self.markers.len() + self.other.len()
    }
}

/// A reader of the bucket with cache-s3's storage (its own runtime).
pub struct Bucket {
    storage: S3Storage,
    rt: tokio::runtime::Runtime,
}

impl Bucket {
    /// The storage at `url` (`s3://BUCKET/PREFIX`), its client configured from `env`.
    pub fn open(url: &str, env: &[(String, String)]) -> Result<Self, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
        let var = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let storage = S3Storage::open_with_env(&parsed, S3Options::default(), &var)
            .map_err(|e| format!("open {url}: {e}"))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("a runtime: {e}"))?;
        Ok(Bucket { storage, rt })
    }

    /// What the entry `key` (`blake3:<hex>`) references; `None` if it is gone.
    pub fn references(&self, key: &str) -> Result<Option<EntryReferences>, String> {
        let digest = Digest::parse(key).map_err(|e| format!("{key}: {e}"))?;
        self.rt
            .block_on(self.storage.entry_references(&digest))
            .map_err(|e| format!("entry {key}: {e}"))
    }

    /// After a quiet gc: every pack and blob is referenced by an entry, every pack
    /// and large blob an entry names is there, every marker is an entry's (its last
    /// use) or a pack's or blob's that is there (a store's claim), and nothing else is
    /// under the prefix. Returns what each entry references.
    pub fn check_closed(&self, l: &Listing) -> Result<BTreeMap<String, Vec<String>>, String> {
        let mut refs = BTreeMap::new();
        let mut problems = Vec::new();
        for key in &l.entries {
            match self.references(key)? {
                Some(r) => {
                    for o in r.required() {
                        if !l.stored.contains(o) {
                            problems.push(format!("entry {key} needs {o}, which is gone"));
                        }
                    }
                    let all = r
                        .packs
                        .iter()
                        .cloned()
                        .chain(r.blobs.into_iter().map(|(name, _)| name))
                        .collect();
                    refs.insert(key.clone(), all);
                }
                None => problems.push(format!("entry {key} went away while it was read")),
            }
        }
        let referenced: BTreeSet<&String> = refs.values().flatten().collect();
        for o in &l.stored {
            if !referenced.contains(o) {
                problems.push(format!("{o} is an orphan: no entry names it"));
            }
        }
        for m in &l.markers {
            // A store's claim of a pack or blob lives as long as the object does.
            let whose = if m.starts_with("packs/") || m.starts_with("blobs/") {
                l.stored.contains(m)
            } else {
                l.entries.contains(&m.replacen('/', ":", 1))
            };
            if !whose {
                problems.push(format!(
                    "used/{m} is an orphan: no such entry, pack or blob"
                ));
            }
        }
        for o in &l.other {
            problems.push(format!("{o} is not a cache object"));
        }
        match problems.len() {
            0 => Ok(refs),
            n if n > 10 => Err(format!(
                "{} (and {} more)",
                problems[..10].join("; "),
                n - 10
            )),
            _ => Err(problems.join("; ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Listing;

    #[test]
    fn objects_are_sorted_by_kind() {
        let names: Vec<String> = [
            "entries/blake3/ab",
            "packs/cd",
            "blobs/blake3/ef",
            "used/blake3/ab",
            "used/packs/cd",
            "stray",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let l = Listing::of(&names);
        assert!(l.entries.contains("blake3:ab"));
        assert_eq!(l.stored.len(), 2);
        assert!(l.markers.contains("blake3/ab"));
        assert!(l.markers.contains("packs/cd"));
        assert_eq!(l.other, ["stray"]);
        assert_eq!(l.len(), 6);
    }
}
